"""Learning-rate schedules shared by the training modules (pure functions of the optimiser step)."""

from __future__ import annotations

import math

__all__ = ["lr_factor"]


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step``: linear warm-up over ``warmup``
    steps, then ``noam`` (∝ 1/√step) or ``cosine`` (to 5 % of the peak at ``total``) decay."""
    step = step + 1
    if step <= warmup:
        return step / max(1, warmup)
    if schedule == "noam":
        return math.sqrt(max(1, warmup) / step)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
