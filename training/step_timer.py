"""A callback that measures optimiser steps per second and writes them to a JSON file.

Used to size a time-boxed run: a short probe run measures the step time on the machine at hand, and the
real run's ``--trainer.max_steps`` is chosen so that its learning-rate schedule (cosine over
``trainer.estimated_stepping_batches``) ends inside the time available. The first ``skip`` steps
(CUDA start-up, worker start, allocator warm-up) are left out of the rate.

    recognizers fit --config ... --trainer.callbacks+=training.step_timer.StepTimer \
        --trainer.callbacks.init_args.path runs/probe/steps.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L

__all__ = ["StepTimer"]


class StepTimer(L.Callback):
    """Wall time of training steps after a warm-up, written (rank 0) when training ends.

    Args:
        path: JSON file to write: ``{"steps", "seconds", "seconds_per_step", "skipped"}``.
        skip: steps left out at the start.
    """

    def __init__(self, path: str, skip: int = 20) -> None:
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self.path = Path(path)
        self.skip = skip
        self._start: float | None = None
        self._steps = 0
        self._last: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if trainer.global_step == self.skip:
            self._start, self._steps = now, 0
        elif self._start is not None:
            self._steps += 1
            self._last = now

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._start is None or self._last is None or not self._steps:
            return
        seconds = self._last - self._start
        record = {"steps": self._steps, "seconds": round(seconds, 3),
                  "seconds_per_step": seconds / self._steps, "skipped": self.skip}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(record, indent=2) + "\n")
