"""training.step_timer.StepTimer: the rate leaves out the warm-up steps and is written by rank 0 only."""

import json
from types import SimpleNamespace

import pytest

from training.step_timer import StepTimer


def _run(timer: StepTimer, steps: int, clock: list[float], monkeypatch, rank_zero: bool = True) -> None:
    ticks = iter(clock)
    monkeypatch.setattr("training.step_timer.time.perf_counter", lambda: next(ticks))
    trainer = SimpleNamespace(global_step=0, is_global_zero=rank_zero)
    for step in range(1, steps + 1):
        trainer.global_step = step  # Lightning has counted the step when on_train_batch_end runs
        timer.on_train_batch_end(trainer, None, None, None, step - 1)
    timer.on_train_end(trainer, None)


def test_rate_after_the_warm_up(tmp_path, monkeypatch):
    path = tmp_path / "out" / "steps.json"
    # one clock reading per step: steps 1-2 are warm-up (slow), the end of step 2 starts the clock,
    # steps 3-6 take 0.5 s each
    _run(StepTimer(str(path), skip=2), 6, [10.0, 20.0, 20.5, 21.0, 21.5, 22.0], monkeypatch)
    record = json.loads(path.read_text())
    assert record == {"steps": 4, "seconds": 2.0, "seconds_per_step": 0.5, "skipped": 2}


def test_nothing_written_when_training_ends_in_the_warm_up_or_off_rank_zero(tmp_path, monkeypatch):
    path = tmp_path / "steps.json"
    _run(StepTimer(str(path), skip=20), 5, [float(i) for i in range(5)], monkeypatch)
    assert not path.exists()
    _run(StepTimer(str(path), skip=1), 3, [0.0, 1.0, 2.0], monkeypatch, rank_zero=False)
    assert not path.exists()


def test_negative_skip_is_refused():
    with pytest.raises(ValueError, match="skip"):
        StepTimer("x.json", skip=-1)
