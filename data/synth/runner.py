"""Resumable, parallel generation shared by the synthetic corpora (math, speech, text).

A generator cuts its work into chunks of independent items, each drawn from its own seeded generator
so that the output does not depend on the number of workers. :func:`run_chunks` runs the chunks, in
spawned worker processes when that pays, and hands each chunk's results to the caller as soon as they
arrive; the caller appends the finished items to a journal (``OUT/.synth-journal.jsonl``: a first
line with the corpus settings, then one JSON object per item). :func:`read_journal` reads it back, so
a rerun with the same settings skips what is done, and refuses a folder made with other settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

__all__ = ["JOURNAL", "read_journal", "run_chunks", "write_text"]

JOURNAL = ".synth-journal.jsonl"


def read_journal(out: Path, config: dict, error: type[Exception]) -> list[dict]:
    """Entries of an earlier run with the same settings; starts a new journal when there is none.

    Args:
        out: corpus root (created when missing).
        config: the settings that decide the corpus content (``dataclasses.asdict`` of its config).
        error: the exception to raise for a folder made with other settings.

    Returns:
        The journaled entries in order; a line cut short by a killed run is skipped.

    Raises:
        error: ``out`` holds a corpus made with other settings.
    """
    path = out / JOURNAL
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"config": config}) + "\n")
        return []
    text = path.read_text()
    lines = text.splitlines()
    if not lines or json.loads(lines[0]).get("config") != config:
        raise error(f"{out} holds a corpus made with other settings ({path}); "
                    "use another --out folder or delete that one")
    if not text.endswith("\n"):  # a killed run may leave half a line: new entries start on a fresh one
        with path.open("a") as journal:
            journal.write("\n")
    entries = []
    for line in lines[1:]:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            continue
    return entries


def run_chunks(run_chunk: Callable[[Any], list], chunks: Sequence, workers: int,
               record: Callable[[list], None], initializer: Callable[[], None] | None = None) -> None:
    """Run ``run_chunk`` on every chunk and pass each result list to ``record`` as it arrives.

    Args:
        run_chunk: a module-level function (it is pickled for the workers) that turns a chunk into
            a list of results; it should catch its own per-item errors.
        chunks: the work, in order.
        workers: worker processes; with 1 (or a single chunk) everything runs in this process.
        record: called in this process with each chunk's results, in completion order.
        initializer: run once in each worker process.

    Workers are spawned, not forked: the caller may hold torch's or matplotlib's threads, which do
    not survive a fork. A script calling this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard. On Ctrl-C the pool is cancelled and the exception re-raised;
    what ``record`` journaled is kept for a rerun.
    """
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            record(run_chunk(chunk))
        return
    with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=get_context("spawn"),
                             initializer=initializer) as ex:
        running = {ex.submit(run_chunk, c) for c in chunks}
        try:
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    record(future.result())
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise


def write_text(path: Path, text: str) -> None:
    """Write through a temporary name, so that readers never see half a file."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    tmp.replace(path)
