"""Episodic writer sampling: training tasks and fixed evaluation splits (writer-htr.md §5, §17 tests 8-9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data.datasets.iam import IAMDataset
from data.episodes import TaskSampler, evaluation_splits, group_by_writer, split_digest
from tests.iam_fixtures import write_iam_tree

# 21 writers: 18 with 32..80 words, 3 under 32 (never drawn); ids in an interleaved dataset order
WORD_COUNTS = {f"{w:03d}": 32 + 3 * w for w in range(18)} | {"100": 31, "101": 5, "102": 16}


def _corpus(counts=WORD_COUNTS) -> tuple[list[str], list[str]]:
    """(ids, writers) per dataset index, writers interleaved as a real file order would not be."""
    items = [(f"{writer}-{k:03d}", writer) for writer, n in counts.items() for k in range(n)]
    items.sort(key=lambda item: (int(item[0][-3:]), item[1]))
    return [i for i, _ in items], [w for _, w in items]


# ---- 8. training tasks ----


def test_training_tasks():
    ids, writers = _corpus()
    sampler = TaskSampler(writers, ways=8, shots=16, seed=3)
    assert len(sampler) == 18 // 8
    drawn: Counter[str] = Counter()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        batches = sampler.meta_batches()
        assert len(batches) == 2
        for tasks in batches:
            assert len(tasks) == 8
            assert len({t.writer for t in tasks}) == 8  # distinct writers
            for task in tasks:
                assert len(task.indices) == 32
                assert len(set(task.indices)) == 32
                assert {writers[i] for i in task.indices} == {task.writer}
                assert task.support == task.indices[0::2]
                assert task.query == task.indices[1::2]
                assert len(task.support) == len(task.query) == 16
                assert not {ids[i] for i in task.support} & {ids[i] for i in task.query}
                drawn[task.writer] += 1
        assert sum(len(b) for b in batches) == 16  # each writer at most once per epoch
    assert not {"100", "101", "102"} & set(drawn)  # under 2K words: never drawn
    assert len(drawn) == 18  # every eligible writer shows up over the epochs


def test_training_tasks_as_batch_sampler():
    _, writers = _corpus()
    sampler = TaskSampler(writers, ways=8, shots=16, seed=3)
    sampler.set_epoch(2)
    flat = list(sampler)
    tasks = sampler.meta_batches(2)
    assert len(flat) == len(sampler)
    for indices, batch in zip(flat, tasks, strict=True):
        assert len(indices) == 8 * 32
        # reshaped to (ways, 2K): support at [:, 0::2], query at [:, 1::2]
        rows = [indices[32 * k:32 * (k + 1)] for k in range(8)]
        assert [tuple(r[0::2]) for r in rows] == [t.support for t in batch]
        assert [tuple(r[1::2]) for r in rows] == [t.query for t in batch]


def test_training_tasks_are_deterministic():
    _, writers = _corpus()
    first = TaskSampler(writers, seed=7).meta_batches(4)
    assert TaskSampler(writers, seed=7).meta_batches(4) == first
    assert TaskSampler(writers, seed=7).meta_batches(5) != first
    assert TaskSampler(writers, seed=8).meta_batches(4) != first


def test_training_tasks_need_enough_writers():
    _, writers = _corpus({"000": 40, "001": 40, "002": 20})
    with pytest.raises(ValueError, match=r"2 of 3 writers have >= 32 words, fewer than ways=8"):
        TaskSampler(writers)
    with pytest.raises(ValueError, match="ways=0"):
        TaskSampler(writers, ways=0)


def test_group_by_writer():
    assert group_by_writer(["b", "a", "b", "c", "a"]) == {"a": [1, 4], "b": [0, 2], "c": [3]}


# ---- 9. evaluation splits ----


def test_evaluation_splits():
    ids, writers = _corpus()
    splits = evaluation_splits(ids, writers, shots=16, num_permutations=10, seed=0)
    groups = group_by_writer(writers)
    eligible = [w for w, i in groups.items() if len(i) >= 32]
    assert [s.writer for s in splits] == [w for w in eligible for _ in range(10)]
    assert [s.permutation for s in splits] == list(range(10)) * len(eligible)
    for split in splits:
        assert len(split.support) == 16
        assert not set(split.support) & set(split.query)
        assert sorted(split.support + split.query) == groups[split.writer]  # all the writer's words
    first_writer = [s for s in splits if s.writer == "000"]
    assert len({s.support for s in first_writer}) == 10  # ten different permutations


def test_evaluation_splits_identical_across_runs_and_orders():
    ids, writers = _corpus()
    splits = evaluation_splits(ids, writers, seed=5)
    assert evaluation_splits(ids, writers, seed=5) == splits
    digest = split_digest(splits, ids)
    # another dataset order gives the same id-level splits, hence the same digest
    reordered = list(range(len(ids)))[::-1]
    r_ids, r_writers = [ids[i] for i in reordered], [writers[i] for i in reordered]
    assert split_digest(evaluation_splits(r_ids, r_writers, seed=5), r_ids) == digest
    # a writer's splits do not depend on the other writers evaluated
    keep = [i for i, w in enumerate(writers) if w in ("003", "010")]
    subset = evaluation_splits([ids[i] for i in keep], [writers[i] for i in keep], seed=5)
    full = {(s.writer, s.permutation): [ids[i] for i in s.query] for s in splits}
    assert all(full[(s.writer, s.permutation)] == [ids[keep[i]] for i in s.query] for s in subset)
    assert split_digest(evaluation_splits(ids, writers, seed=6), ids) != digest


@pytest.mark.slow  # a fresh interpreter imports torch (seconds)
def test_evaluation_splits_identical_across_processes(tmp_path):
    ids, writers = _corpus()
    expected = split_digest(evaluation_splits(ids, writers, seed=11), ids)
    script = tmp_path / "digest.py"
    script.write_text(
        "import json, sys\n"
        "from data.episodes import evaluation_splits, split_digest\n"
        "ids, writers = json.load(sys.stdin)\n"
        "print(split_digest(evaluation_splits(ids, writers, seed=11), ids))\n")
    root = Path(__file__).resolve().parents[1]
    # a fixed PYTHONHASHSEED in the child, a random one here: str hashes differ between the two
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, str(script)], input=json.dumps([ids, writers]), text=True,
                            capture_output=True, env=env, cwd=root, check=True, timeout=300)
    assert result.stdout.strip() == expected


def test_evaluation_split_arguments():
    ids, writers = _corpus({"000": 40})
    with pytest.raises(ValueError, match="ids must be unique"):
        evaluation_splits(ids[:-1] + ids[:1], writers)
    with pytest.raises(ValueError, match="40 ids but 39 writers"):
        evaluation_splits(ids, writers[:-1])
    with pytest.raises(ValueError, match="leaves no query word"):
        evaluation_splits(ids, writers, min_words=16)
    assert evaluation_splits(ids, writers, min_words=41) == []


# ---- on the IAM fixture ----


def test_sampler_on_iam_dataset(tmp_path):
    fake = write_iam_tree(tmp_path / "IAM")
    train = IAMDataset(fake.root, split="train", split_files=fake.split_files)
    sampler = TaskSampler(train.writers, ways=2, shots=16, seed=0)
    assert len(sampler) == 1
    (tasks,) = sampler.meta_batches(0)
    assert {t.writer for t in tasks} == {"000", "001"}
    for task in tasks:
        assert {train.samples[i].writer for i in task.indices} == {task.writer}
    test = IAMDataset(fake.root, split="test", split_files=fake.split_files)
    splits = evaluation_splits(test.ids, test.writers)
    assert {s.writer for s in splits} == {"003"}
    assert len(splits) == 10
    assert all(len(s.query) == 40 - 16 for s in splits)
