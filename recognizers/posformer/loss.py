"""PosFormer's training loss (posformer.md §5): symbol cross-entropy plus the position branch's level and
relative-position cross-entropies, weighted and normalised as in the reference implementation.

``L = (w_sym·L_sym + w_lvl·L_lvl + w_rel·L_rel) / normalizer`` with defaults 1, 0.25, 0.25 and 1.5.
``L_sym`` averages over the positions where ``out ≠ pad``; ``L_lvl`` and ``L_rel`` average over the same
positions (the stop position included) minus any whose target is ``tree.IGNORE_INDEX`` (the "ignore"
stop policy). Without position outputs the total is ``w_sym·L_sym`` (CoMER), with no normaliser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from .model import PosFormerOutput
from .tree import IGNORE_INDEX

__all__ = ["LossWeights", "PosFormerLoss", "posformer_loss"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three loss terms and the normaliser of their sum (§5, reference values)."""

    symbol: float = 1.0
    level: float = 0.25
    relpos: float = 0.25
    normalizer: float = 1.5


@dataclass(frozen=True)
class PosFormerLoss:
    """Scalar losses: ``total`` to optimise; the terms for logging (None without the position branch)."""

    total: Tensor
    symbol: Tensor
    level: Tensor | None = None
    relpos: Tensor | None = None


def _masked_ce(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over ``mask``: logits `(N, L, K)`, targets and mask `(N, L)`."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                         reduction="none")  # (N·L,)
    mask = mask.flatten().to(ce.dtype)
    return (ce * mask).sum() / mask.sum().clamp(min=1.0)


def posformer_loss(output: PosFormerOutput, out: Tensor, level: Tensor | None = None,
                   relpos: Tensor | None = None, *, pad_id: int = 0, weights: LossWeights = LossWeights(),
                   ) -> PosFormerLoss:
    """The weighted loss of one teacher-forced batch.

    Args:
        output: the model's :class:`PosFormerOutput`.
        out: `(N, L)` next-token targets (pad = ``pad_id``).
        level: `(N, L)` level targets (``tree.TeacherForcing.level``); needed with position outputs.
        relpos: `(N, L)` relative-position targets.
        pad_id: the padding id of ``out``.
        weights: term weights and normaliser.

    Returns:
        The total and its terms, float32 scalars.
    """
    symbol = F.cross_entropy(output.logits.float().flatten(0, 1), out.flatten(), ignore_index=pad_id)
    if output.level_logits is None or output.relpos_logits is None:
        return PosFormerLoss(weights.symbol * symbol, symbol)
    if level is None or relpos is None:
        raise ValueError("position outputs need level and relpos targets")
    valid = out != pad_id
    level_loss = _masked_ce(output.level_logits, level, valid & (level != IGNORE_INDEX))
    relpos_loss = _masked_ce(output.relpos_logits, relpos, valid & (relpos != IGNORE_INDEX))
    total = (weights.symbol * symbol + weights.level * level_loss + weights.relpos * relpos_loss)
    return PosFormerLoss(total / weights.normalizer, symbol, level_loss, relpos_loss)
