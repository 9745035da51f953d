"""PosFormer: handwritten mathematical expressions to LaTeX tokens (posformer.md §0, §3).

Guan et al., "PosFormer: Recognizing Complex Handwritten Mathematical Expression with Position Forest
Transformer" (ECCV 2024), reference implementation SJTU-DeepVisionLab/PosFormer (implemented from the
spec, not copied). It is CoMER (DenseNet-B encoder, transformer decoder with coverage-based attention
refinement) plus an Implicit Attention Correction in the ARM and a training-only position branch that
predicts each next token's nesting level and relative position in the position forest (``tree.py``).

Use:

* training: ``forward(images, masks, tgt, pos_vectors)`` on a bidirectional teacher-forcing batch
  (``tree.bidirectional_targets``), then ``loss.posformer_loss``;
* decoding: ``encode`` once, ``init_state(memory, memory_mask, direction)``, then ``step(tokens, state)``
  per token; ``state.index_select`` reorders hypotheses. ``score`` teacher-forces hypotheses (the
  opposite-direction rescoring of §6). The position branch is never used here. In eval mode ``step``
  reproduces the teacher-forced logits exactly; in training mode dropout and the ARM's masked BatchNorm
  (batch statistics over all L steps at once) make them differ, as in any cached decoder.

Legend: B images, N decoder rows (2B: l2r rows then r2l rows), L steps, h×w feature cells, d width,
V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .config import PosFormerConfig
from .decoder import DecoderState, PositionDecoder, WordDecoder
from .encoder import Encoder

__all__ = ["PosFormer", "PosFormerOutput"]


@dataclass(frozen=True)
class PosFormerOutput:
    """Teacher-forced outputs.

    Attributes:
        logits: `(N, L, V)` next-token logits of the word decoder.
        level_logits: `(N, L, 5)` nesting level of the next token; None without the position branch.
        relpos_logits: `(N, L, 6)` its relative position; None without the position branch.
    """

    logits: Tensor
    level_logits: Tensor | None = None
    relpos_logits: Tensor | None = None


class PosFormer(nn.Module):
    """The PosFormer network. With ``cfg.position.enabled=False`` it is the inference model only.

    Args:
        cfg: the configuration (``config.preset("paper", ...)`` for the reference sizes).
    """

    def __init__(self, cfg: PosFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder, cfg.d_model)
        self.decoder = WordDecoder(cfg.decoder, cfg.vocab_size, cfg.iac_ids, cfg.pad_id)
        self.position_decoder = (PositionDecoder(cfg.decoder, cfg.position, cfg.iac_ids, cfg.pad_id)
                                 if cfg.position.enabled else None)

    def encode(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """Encode zero-padded images.

        Args:
            images: `(B, 1, H, W)` in [0, 1], white ink on black.
            masks: `(B, H, W)` bool, True on padding.

        Returns:
            memory `(B, h, w, d)` and memory_mask `(B, h, w)` (True on padding).
        """
        return self.encoder(images, masks)

    @staticmethod
    def _expand(memory: Tensor, memory_mask: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        """Repeat B images for rows = k·B decoder rows (row r reads image r mod B)."""
        b = memory.shape[0]
        if rows % b:
            raise ValueError(f"{rows} decoder rows are not a multiple of {b} images")
        k = rows // b
        return memory.repeat(k, 1, 1, 1), memory_mask.repeat(k, 1, 1)  # (k·B, h, w, d), (k·B, h, w)

    def score(self, memory: Tensor, memory_mask: Tensor, tgt: Tensor) -> Tensor:
        """Teacher-forced word logits from encoded memory.

        Args:
            memory: `(B, h, w, d)`; memory_mask `(B, h, w)`.
            tgt: `(N, L)` decoder inputs, N a multiple of B (row r reads image r mod B).

        Returns:
            `(N, L, V)` logits.
        """
        return self.decoder(tgt, *self._expand(memory, memory_mask, tgt.shape[0]))

    def attention(self, memory: Tensor, memory_mask: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        """Where each decoder input looked: the last layer's cross-attention, averaged over heads.

        The last layer's weights are the ones the ARM has corrected for coverage, so they are the
        sharpest picture of which image region produced each symbol (the "attention view").

        Args:
            memory: `(B, h, w, d)`; memory_mask `(B, h, w)`.
            tgt: `(N, L)` decoder inputs, N a multiple of B (row r reads image r mod B).

        Returns:
            attention `(N, L, h, w)` (each `(h, w)` map sums to 1 over the valid cells) and the logits
            `(N, L, V)` of the same pass.
        """
        memory, memory_mask = self._expand(memory, memory_mask, tgt.shape[0])
        weights: list[Tensor] = []
        logits = self.decoder(tgt, memory, memory_mask, attention=weights)
        h, w = memory.shape[1:3]
        return weights[-1].mean(dim=1).unflatten(-1, (h, w)), logits

    def forward(self, images: Tensor, masks: Tensor, tgt: Tensor, pos_vectors: Tensor | None = None
                ) -> PosFormerOutput:
        """Bidirectional teacher forcing (§5).

        Args:
            images: `(B, 1, H, W)`; masks `(B, H, W)` True on padding.
            tgt: `(N, L)` decoder inputs, normally 2B rows: l2r ``[sos, y..]`` then r2l
                ``[eos, y reversed..]``.
            pos_vectors: `(N, L, 5)` position paths of the inputs; None skips the position branch.

        Returns:
            Word logits, and the position logits when the branch exists and ``pos_vectors`` is given.
        """
        memory, memory_mask = self._expand(*self.encode(images, masks), tgt.shape[0])
        logits = self.decoder(tgt, memory, memory_mask)
        if self.position_decoder is None or pos_vectors is None:
            return PosFormerOutput(logits)
        return PosFormerOutput(logits, *self.position_decoder(pos_vectors, tgt, memory, memory_mask))

    def start_token(self, direction: str) -> int:
        """``sos_id`` for l2r, ``eos_id`` for r2l (BTTR's convention)."""
        return self.cfg.sos_id if direction == "l2r" else self.cfg.eos_id

    def stop_token(self, direction: str) -> int:
        """``eos_id`` for l2r, ``sos_id`` for r2l."""
        return self.cfg.eos_id if direction == "l2r" else self.cfg.sos_id

    def init_state(self, memory: Tensor, memory_mask: Tensor, direction: str = "l2r") -> DecoderState:
        """Decoding state before the first step: per-layer memory keys/values, empty caches, zero coverage.

        Args:
            memory: `(N, h, w, d)`; memory_mask `(N, h, w)` (one row per hypothesis).
            direction: ``"l2r"`` or ``"r2l"``; the first ``step`` gets :meth:`start_token` of it.
        """
        return self.decoder.init_state(memory, memory_mask, direction)

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """One decoding step. Args: tokens `(N,)` last tokens. Returns logits `(N, V)` and the new state."""
        return self.decoder.step(tokens, state)

    def inference_state_dict(self) -> dict[str, Tensor]:
        """The weights without the training-only position branch (§12 item 5); loads strictly into a model
        built with ``position.enabled=False``."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("position_decoder.")}
