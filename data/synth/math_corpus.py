"""Synthetic handwritten-math corpus in the CROHME layout (``recognizers synth math``).

Output: ``OUT/train/`` and ``OUT/test/``, each a CROHME root (posformer.md §2.1) with ``caption.txt``
(``<name> <tokens...>`` per line) and ``img/<name>.png`` (8-bit grayscale, white ink on black), plus
``OUT/synth.json`` (settings, counts, writers per split, the hold-out rule, version).

Held out: writers and captions. Test images are drawn by font families that train never uses
(:data:`data.synth.math.WRITERS`), and their captions come from the test share of a stable hash of
the caption (:func:`data.synth.expressions.caption_split`), so no caption is in both splits.

Item ``i`` of a split gets its own generator seeded with ``(seed, split code, i)``: caption, writer,
dpi and every augmentation come from it alone, so the corpus is the same for any number of worker
processes. Images are written atomically and listed in ``OUT/.synth-journal.jsonl``; a rerun with
the same settings skips finished images, and ``caption.txt`` / ``synth.json`` are rewritten at the end.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from .expressions import MAX_TOKENS, TEST_SHARE, sample_for_split
from .math import check_renderer, render_caption, split_writers, usable_writers
from .runner import JOURNAL, read_journal, run_chunks, write_text

__all__ = ["SPLITS", "VERSION", "MathConfig", "MathConfigError", "MathSummary", "held_out_rule",
           "synthesize_math"]

VERSION = 1  # bump when the output for a given seed changes
SPLITS = ("train", "test")
SPLIT_CODES = {"train": 0, "test": 2}  # 2 as in the speech corpus; dev (1) is not made
CHUNK = 8  # images per worker task

logger = logging.getLogger(__name__)


class MathConfigError(ValueError):
    """Sizes that leave a split empty, or an output folder made with other settings."""


@dataclass(frozen=True)
class MathConfig:
    """Everything that decides the content of a corpus (the number of workers does not)."""

    num: int
    seed: int
    test_fraction: float = 0.1
    version: int = VERSION

    def counts(self) -> dict[str, int]:
        """Images per split; test gets at least one when its fraction is positive."""
        if self.seed < 0:
            raise MathConfigError(f"--seed must be >= 0, got {self.seed}")
        if not 0 <= self.test_fraction < 1:
            raise MathConfigError("--test-fraction must lie in [0, 1)")
        test = max(1, round(self.num * self.test_fraction)) if self.test_fraction > 0 else 0
        if self.num - test < 1:
            raise MathConfigError(f"--num {self.num} with {test} test images leaves no training image")
        return {"train": self.num - test, "test": test}


@dataclass(frozen=True)
class MathJob:
    """One image to draw."""

    name: str
    split: str
    index: int
    path: str
    seed: int


@dataclass
class MathSummary:
    """Outcome of :func:`synthesize_math`."""

    counts: dict[str, int]  # images written per split
    failed: list[str]  # names whose rendering failed


def draw_item(split: str, index: int, seed: int) -> tuple[list[str], str, object]:
    """Caption, writer name and image of item ``index`` of ``split`` (deterministic for the triple)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    tokens = sample_for_split(rng, split)
    writers = usable_writers(split, tokens)
    writer = writers[int(rng.integers(len(writers)))]
    return tokens, writer.name, render_caption(tokens, writer, rng)


def _run_chunk(jobs: list[MathJob]) -> list[tuple[str, str | None, str]]:
    """Worker task: ``(name, caption or None, writer or error)`` per job."""
    results = []
    for job in jobs:
        try:
            tokens, writer, image = draw_item(job.split, job.index, job.seed)
            path = Path(job.path)
            tmp = path.with_name(path.name + ".part")
            image.save(tmp, format="PNG")
            tmp.replace(path)
            results.append((job.name, " ".join(tokens), writer))
        except Exception as exc:  # one broken formula must not end the run; it is reported
            results.append((job.name, None, f"{type(exc).__name__}: {exc}"))
    return results


def _plan(out: Path, config: MathConfig) -> list[MathJob]:
    jobs = []
    for split, count in config.counts().items():
        (out / split / "img").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"synth_{split}_{i:06d}"
            jobs.append(MathJob(name, split, i, str(out / split / "img" / f"{name}.png"), config.seed))
    return jobs


def _read_journal(out: Path, config: MathConfig) -> dict[str, tuple[str, str]]:
    """Finished images of an earlier run with the same config: ``{name: (caption, writer)}``.

    Raises:
        MathConfigError: ``out`` holds a corpus made with other settings.
    """
    entries = read_journal(out, asdict(config), MathConfigError)
    return {entry["name"]: (entry["caption"], entry["writer"]) for entry in entries}


def _execute(pending: list[MathJob], jobs: int, journal: TextIO, progress) -> list[tuple]:
    """Run the jobs (in worker processes when it pays), journaling each finished image."""
    chunks = [pending[i:i + CHUNK] for i in range(0, len(pending), CHUNK)]
    results: list[tuple] = []

    def record(chunk_results):
        for name, caption, writer in chunk_results:
            if caption is not None:
                journal.write(json.dumps({"name": name, "caption": caption, "writer": writer}) + "\n")
        journal.flush()
        results.extend(chunk_results)
        progress.update(len(chunk_results))

    run_chunks(_run_chunk, chunks, jobs, record)
    return results


def held_out_rule() -> str:
    """The hold-out of the module docstring in one paragraph (recorded in ``synth.json``)."""
    writers = "; ".join(f"{s}: " + ", ".join(w.name for w in split_writers(s)) for s in SPLITS)
    return (f"Writers (font families) are disjoint between splits ({writers}). Captions are split by "
            f"a BLAKE2b hash of the caption text (person 'synthmath'): the lowest {TEST_SHARE:.0%} of "
            "the hash space is test, the rest train, whatever the seed or size, so no caption is in "
            "both splits. Augmentation ranges are the same in both splits.")


def _write_index(out: Path, config: MathConfig, plan: list[MathJob], done: dict[str, tuple[str, str]],
                 failed: list[str]) -> dict[str, int]:
    """``caption.txt`` per split (in item order) and ``synth.json``; returns images per split."""
    counts = dict.fromkeys(SPLITS, 0)
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    writers: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for job in plan:
        if job.name in done:
            caption, writer = done[job.name]
            lines[job.split].append(f"{job.name}\t{caption}\n")
            counts[job.split] += 1
            writers[job.split][writer] = writers[job.split].get(writer, 0) + 1
    for split in SPLITS:
        if lines[split]:
            write_text(out / split / "caption.txt", "".join(lines[split]))
    info = {**asdict(config), "counts": counts, "failed": failed, "max_tokens": MAX_TOKENS,
            "fonts": {s: [w.name for w in split_writers(s)] for s in SPLITS},
            "images_per_font": writers, "held_out": held_out_rule()}
    write_text(out / "synth.json", json.dumps(info, indent=2) + "\n")
    return counts


def synthesize_math(out: str | Path, config: MathConfig, *, jobs: int | None = None,
                    progress: bool = True) -> MathSummary:
    """Write a synthetic CROHME-layout corpus (see the module docstring).

    Args:
        out: corpus root; rerunning with the same config resumes an interrupted run.
        config: size, seed and test fraction.
        jobs: worker processes (default: all CPU cores); the output does not depend on it.
        progress: show a progress bar on stderr (when it is a terminal).

    Workers are spawned, so a script calling this with ``jobs > 1`` needs the usual
    ``if __name__ == "__main__":`` guard.

    Returns:
        Images per split and the names that failed.

    Raises:
        math.RendererError: matplotlib is missing.
        math.MissingFontError: a writer font is missing (names the Debian packages).
        MathConfigError: bad sizes, or ``out`` holds a corpus made with other settings.
    """
    from tqdm import tqdm

    out = Path(out)
    config.counts()  # validate before any slow step
    check_renderer()
    done_before = _read_journal(out, config)
    plan = _plan(out, config)
    done = {j.name: done_before[j.name] for j in plan if j.name in done_before and Path(j.path).is_file()}
    pending = [j for j in plan if j.name not in done]
    with (out / JOURNAL).open("a") as journal, \
            tqdm(total=len(plan), initial=len(done), unit="img", file=sys.stderr,
                 disable=None if progress else True, desc="synth math") as bar:
        results = _execute(pending, jobs or os.cpu_count() or 1, journal, bar)
    failed = []
    for name, caption, writer in results:
        if caption is None:
            logger.warning("%s failed: %s", name, writer)
            failed.append(name)
        else:
            done[name] = (caption, writer)
    counts = _write_index(out, config, plan, done, sorted(failed))
    return MathSummary(counts, sorted(failed))
