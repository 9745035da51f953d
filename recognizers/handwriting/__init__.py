"""Writer-adaptive handwriting recognition: the base models FPHTR and SAR (writer-htr.md §4).

``config`` (frozen configuration and presets), ``backbone`` (ResNet18/34 and ResNet31-HTR), ``fphtr``
and ``sar`` (the two decoders), ``model`` (``HTRModel``: backbone + decoder, with writer-code hook A and
the classifier's input features for MetaHTR), ``search`` (greedy/beam decoding over the shared
``recognizers.decoding``) and ``recognizer`` (the image → text bundle). Pre-processing and the
character vocabulary live in ``data.handwriting``. Writer adaptation: ``metahtr`` (MetaHTR's inner and
outer loop), ``writer_codes`` and ``writer_code_model`` (writer codes), ``adaptation`` (which method a
model file supports, used by ``HandwritingRecognizer.adapt``) and ``profile`` (``WriterProfile``).
"""

from .config import BackboneConfig, FPHTRConfig, HTRConfig, SARConfig, preset
from .fphtr import FPHTRMemory, FPHTRState
from .model import FeatureHook, HTRModel
from .sar import SARMemory, SARState

__all__ = [
    "BackboneConfig",
    "FPHTRConfig",
    "FPHTRMemory",
    "FPHTRState",
    "FeatureHook",
    "HTRConfig",
    "HTRModel",
    "SARConfig",
    "SARMemory",
    "SARState",
    "preset",
]
