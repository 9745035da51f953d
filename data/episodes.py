"""Episodic writer sampling for writer adaptation (writer-htr.md §5, after the MetaHTR thesis code).

A **task** is one writer. Meta-training draws meta-batches of ``ways`` (8) distinct writers and, for
each, ``2K`` (32) of that writer's words, K = ``shots`` = 16 (learn2learn ``NWays(8)`` + ``KShots(32)``
in the thesis); the words at even positions 0, 2, ..., 30 are the support set, the odd ones the query
set. One epoch is ``floor(writers / ways)`` meta-batches, every writer drawn at most once per epoch.

Validation and test use all of a writer's words: ``num_permutations`` (10) permutations per writer are
fixed from a seed; in each, the first K words are the support set and all the others the query set.

Everything works on dataset indices and the per-index writer ids (``IAMDataset.writers``), so it is
independent of the image format. Randomness comes from ``numpy.random.Generator`` seeded with integer
lists, never from the global generators or Python's salted ``hash``, so the draws are identical across
runs, processes and worker layouts. Evaluation permutations are drawn per writer from ``(seed, stable
hash of the writer id)`` over the writer's ids in sorted order: they do not depend on the dataset's order
or on which other writers are evaluated, and :func:`split_digest` fingerprints them so that every
method can be shown to use the same query sets.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

__all__ = [
    "NUM_PERMUTATIONS",
    "SHOTS",
    "WAYS",
    "EvalSplit",
    "Task",
    "TaskSampler",
    "evaluation_splits",
    "group_by_writer",
    "split_digest",
]

WAYS = 8  # writers per meta-batch
SHOTS = 16  # K: support words per writer; a training task holds 2K words
NUM_PERMUTATIONS = 10  # fixed evaluation splits per writer

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One writer's words in a meta-batch, in draw order: support at even positions, query at odd ones."""

    writer: str
    indices: tuple[int, ...]  # (2K,) dataset indices, distinct

    @property
    def support(self) -> tuple[int, ...]:
        """(K,) positions 0, 2, ..., 2K - 2."""
        return self.indices[0::2]

    @property
    def query(self) -> tuple[int, ...]:
        """(K,) positions 1, 3, ..., 2K - 1."""
        return self.indices[1::2]


@dataclass(frozen=True)
class EvalSplit:
    """One fixed evaluation split of one writer."""

    writer: str
    permutation: int  # 0 .. num_permutations - 1
    support: tuple[int, ...]  # (K,) dataset indices: the first K of the permutation
    query: tuple[int, ...]  # (N - K,) dataset indices: all the writer's other words


def group_by_writer(writers: Sequence[str]) -> dict[str, list[int]]:
    """Dataset indices of each writer.

    Args:
        writers: the writer id of each dataset index (``IAMDataset.writers``).

    Returns:
        Writer id -> ascending indices, writers sorted by id.
    """
    groups: dict[str, list[int]] = {}
    for index, writer in enumerate(writers):
        groups.setdefault(writer, []).append(index)
    return {writer: groups[writer] for writer in sorted(groups)}


def _check_positive(**counts: int) -> None:
    bad = {name: value for name, value in counts.items() if value < 1}
    if bad:
        raise ValueError(f"must be >= 1: {', '.join(f'{k}={v}' for k, v in bad.items())}")


class TaskSampler(Sampler[list[int]]):
    """Meta-batches of ``ways`` writer tasks with ``2 * shots`` words each (§5).

    As a ``batch_sampler`` it yields each meta-batch as one flat list of ``ways * 2 * shots`` indices,
    task after task: a collated batch reshaped to ``(ways, 2 * shots, ...)`` has the support set at
    ``[:, 0::2]`` and the query set at ``[:, 1::2]``. :meth:`meta_batches` gives the same draws as
    :class:`Task` objects.

    Args:
        writers: the writer id of each dataset index.
        ways: distinct writers per meta-batch.
        shots: K; each task draws 2K distinct words, so writers with fewer are never drawn.
        seed: with the epoch (:meth:`set_epoch`), fixes every draw.

    Raises:
        ValueError: fewer than ``ways`` writers have 2K words.
    """

    def __init__(self, writers: Sequence[str], *, ways: int = WAYS, shots: int = SHOTS,
                 seed: int = 0) -> None:
        _check_positive(ways=ways, shots=shots)
        self.ways, self.shots, self.seed, self.epoch = ways, shots, seed, 0
        groups = group_by_writer(writers)
        self.groups = {w: np.asarray(i) for w, i in groups.items() if len(i) >= 2 * shots}
        if len(self.groups) < ways:
            raise ValueError(f"TaskSampler: {len(self.groups)} of {len(groups)} writers have >= {2 * shots} "
                             f"words, fewer than ways={ways}")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws :meth:`__iter__` yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups) // self.ways

    def meta_batches(self, epoch: int | None = None) -> list[list[Task]]:
        """The meta-batches of one epoch (default: the current one), a pure function of seed and epoch."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        writers = list(self.groups)
        order = [writers[k] for k in rng.permutation(len(writers))]
        batches = []
        for b in range(len(self)):
            tasks = []
            for writer in order[b * self.ways:(b + 1) * self.ways]:
                words = self.groups[writer]
                drawn = words[rng.choice(len(words), size=2 * self.shots, replace=False)]  # (2K,)
                tasks.append(Task(writer, tuple(int(i) for i in drawn)))
            batches.append(tasks)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for tasks in self.meta_batches():
            yield [i for task in tasks for i in task.indices]  # (ways * 2K,) task-major


def _writer_key(writer: str) -> int:
    """A 64-bit integer from the writer id that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(writer.encode("utf-8")).digest()[:8], "little")


def evaluation_splits(ids: Sequence[str], writers: Sequence[str], *, shots: int = SHOTS,
                      num_permutations: int = NUM_PERMUTATIONS, seed: int = 0,
                      min_words: int | None = None) -> list[EvalSplit]:
    """Fixed evaluation splits: per writer, ``num_permutations`` seeded permutations of its words (§5, §9.1).

    Each permutation is drawn by a generator seeded with ``(seed, stable hash of the writer id)`` over
    the writer's words sorted by id, so a writer's splits do not depend on the dataset's order nor on
    the other writers evaluated.

    Args:
        ids: the word (or line) id of each dataset index, unique.
        writers: the writer id of each dataset index.
        shots: K, the support size.
        num_permutations: splits per writer.
        seed: the evaluation seed.
        min_words: writers with fewer words are skipped (logged); default 2K, the thesis filter.

    Returns:
        The splits, by writer id then permutation number; support and query are disjoint and together
        hold all of the writer's indices.

    Raises:
        ValueError: ``ids`` and ``writers`` differ in length, an id repeats, or ``min_words <= shots``.
    """
    _check_positive(shots=shots, num_permutations=num_permutations)
    min_words = 2 * shots if min_words is None else min_words
    if min_words <= shots:
        raise ValueError(f"min_words={min_words} leaves no query word with shots={shots}")
    if len(ids) != len(writers):
        raise ValueError(f"{len(ids)} ids but {len(writers)} writers")
    if len(set(ids)) != len(ids):
        raise ValueError("evaluation_splits: ids must be unique")
    splits = []
    for writer, indices in group_by_writer(writers).items():
        if len(indices) < min_words:
            _log.info("evaluation: skipped writer %s with %d < %d words", writer, len(indices), min_words)
            continue
        ordered = sorted(indices, key=lambda i: ids[i])
        rng = np.random.default_rng([seed, _writer_key(writer)])
        for p in range(num_permutations):
            perm = [ordered[k] for k in rng.permutation(len(ordered))]
            splits.append(EvalSplit(writer, p, tuple(perm[:shots]), tuple(perm[shots:])))
    return splits


def split_digest(splits: Sequence[EvalSplit], ids: Sequence[str]) -> str:
    """SHA-256 over the ids of every split's support and query sets, in order.

    Two methods evaluated on the same splits report the same digest, whatever the dataset order.

    Args:
        splits: from :func:`evaluation_splits`.
        ids: the id of each dataset index.

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256()
    for split in splits:
        support = " ".join(ids[i] for i in split.support)
        query = " ".join(ids[i] for i in split.query)
        digest.update(f"{split.writer}\t{split.permutation}\t{support}\t{query}\n".encode())
    return digest.hexdigest()
