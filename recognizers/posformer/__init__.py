"""PosFormer: handwritten mathematical expressions to LaTeX (posformer.md).

``config`` (frozen configuration and presets), ``tree`` (position-forest labels and teacher-forcing
targets), ``model`` (the network: ``encoder``, ``arm``, ``decoder``) and ``loss`` (the weighted training
loss). ``search`` is the bidirectional beam search with reverse rescoring (§6) over the model-agnostic
``recognizers.decoding``, and ``recognizer`` the image → LaTeX bundle behind ``recognizers.load``.
"""

from .config import IAC_SYMBOLS, IAC_SYMBOLS_OUTPUT_ALIGNED, PosFormerConfig, preset, resolve_ids
from .decoder import DecoderState
from .loss import LossWeights, PosFormerLoss, posformer_loss
from .model import PosFormer, PosFormerOutput
from .tree import MalformedLatexError, PositionLabels, TeacherForcing, bidirectional_targets, label_positions

__all__ = [
    "IAC_SYMBOLS",
    "IAC_SYMBOLS_OUTPUT_ALIGNED",
    "DecoderState",
    "LossWeights",
    "MalformedLatexError",
    "PosFormer",
    "PosFormerConfig",
    "PosFormerLoss",
    "PosFormerOutput",
    "PositionLabels",
    "TeacherForcing",
    "bidirectional_targets",
    "label_positions",
    "posformer_loss",
    "preset",
    "resolve_ids",
]
