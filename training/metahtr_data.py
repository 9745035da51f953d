"""Episodes for MetaHTR (writer-htr.md §5, §9.1): writer tasks to train on, fixed writer splits to evaluate.

An IAM-layout corpus (real or ``recognizers synth text``) is read once with ``data.datasets.iam`` and
its word images go through the model's pipeline (``data.handwriting.normalize_image``; no augmentation,
the thesis's meta-training default).

* **train**: ``data.episodes.TaskSampler`` as the batch sampler: one batch is a meta-batch of ``ways``
  writers × 2K words, task after task; the module splits it at writer changes, support = even
  positions, query = odd (§5). The tasks' writers are those of ``task_splits`` (the training split by
  default; see :class:`EpisodeDataModule`).
* **validation / test**: one batch per writer (all its words, loaded once) with the writer's
  ``num_permutations`` fixed splits from ``data.episodes.evaluation_splits`` as positions into those
  words: support = the first K, query = all the others (§5, §9.1). ``split_digest`` (logged, and kept as
  :attr:`EpisodeDataModule.split_digests`) fingerprints the query sets so that every method can be shown
  to use the same ones.

Batches (dicts; Lightning moves their tensors to the device):

* train: ``images`` (list of `(1, H_b, W_b)`), ``texts``, ``writers``;
* evaluation: ``writer``, ``images``, ``texts``, ``ids``, ``splits`` (list of (support, query) position
  tuples into the writer's words).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from data.datasets.iam import IAMCorpus, IAMDataset, read_iam
from data.episodes import NUM_PERMUTATIONS, SHOTS, WAYS, TaskSampler, evaluation_splits, split_digest
from data.handwriting import HandwritingConfig, normalize_image

__all__ = ["EpisodeDataModule", "WriterSplits", "collate_words"]

log = logging.getLogger(__name__)

# split name -> file under ROOT/splits/aachen (the names of training.htr_data, for the same recipes)
_SPLIT_LISTS = {"train": "train.uttlist", "val": "validation.uttlist", "test": "test.uttlist"}


class _Words(Dataset):
    """IAM words as ``(normalised image (1, H', W'), text, writer)``."""

    def __init__(self, dataset: IAMDataset, preprocess: HandwritingConfig) -> None:
        self.dataset, self.preprocess = dataset, preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple:
        pixels, text, writer = self.dataset[index]
        return normalize_image(pixels, self.preprocess), text, writer


def collate_words(items: Sequence[tuple]) -> dict:
    """A meta-batch: lists of images, texts and writer ids, in sampler order."""
    return {"images": [i for i, _, _ in items], "texts": [t for _, t, _ in items],
            "writers": [w for _, _, w in items]}


class WriterSplits(Dataset):
    """One item per evaluated writer: all its words and its fixed splits (module docstring).

    Args:
        dataset: the split's words.
        shots: K, the support size.
        num_permutations: splits per writer.
        seed: the evaluation seed (``evaluation_splits``).
        max_writers: evaluate only the first writers by id (cheaper validation during training, §13).
        preprocess: the image pipeline's settings (the base model's).
    """

    def __init__(self, dataset: IAMDataset, *, shots: int = SHOTS, num_permutations: int = NUM_PERMUTATIONS,
                 seed: int = 0, max_writers: int | None = None,
                 preprocess: HandwritingConfig | None = None) -> None:
        self.dataset, self.preprocess = dataset, preprocess or HandwritingConfig()
        ids, writers = dataset.ids, dataset.writers
        splits = evaluation_splits(ids, writers, shots=shots, num_permutations=num_permutations, seed=seed)
        by_writer: dict[str, list] = {}
        for split in splits:
            by_writer.setdefault(split.writer, []).append(split)
        kept = sorted(by_writer)[:max_writers]
        self.splits = [s for w in kept for s in by_writer[w]]
        self.digest = split_digest(self.splits, ids)
        self.items = []
        for writer in kept:
            words = sorted({i for s in by_writer[writer] for i in (*s.support, *s.query)})
            position = {index: p for p, index in enumerate(words)}
            local = [(tuple(position[i] for i in s.support), tuple(position[i] for i in s.query))
                     for s in by_writer[writer]]
            self.items.append((writer, words, local))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        writer, words, splits = self.items[index]
        samples = [self.dataset[i] for i in words]
        return {"writer": writer, "images": [normalize_image(p, self.preprocess) for p, _, _ in samples],
                "texts": [t for _, t, _ in samples], "ids": [self.dataset.ids[i] for i in words],
                "splits": splits}


class EpisodeDataModule(L.LightningDataModule):
    """Writer tasks and evaluation splits over an IAM-layout corpus.

    Args:
        root: the corpus folder.
        split_files: split name → list file (``train``, ``val``, ``test``); default: the Aachen-style lists
            ``ROOT/splits/aachen/{train,validation,test}.uttlist`` (as ``training.htr_data``).
        split_kind: ``"forms"`` (Aachen lists) or ``"lines"`` (IAM task lists).
        ways: writers per meta-batch (8).
        shots: K (16): a training task holds 2K words; evaluation supports hold K.
        num_permutations: evaluation splits per writer (10).
        val_writers: evaluate only this many validation writers (None: all).
        task_splits: the splits whose writers make the training tasks (default the training split). A base
            model reads its own training writers almost perfectly, so tasks from them teach the inner loop
            little about new hands; ``["val"]`` (or ``["train", "val"]``) meta-trains on writers the base
            never saw, and the evaluated validation writers (the first ``val_writers`` by id) are then left
            out of the tasks.
        seed: the task sampler's seed; eval_seed: the evaluation splits' seed.
        num_workers: DataLoader workers.

    ``preprocess`` (attribute) is the image pipeline; ``MetaHTRModule.setup`` sets it to the base model's.
    """

    def __init__(self, root: str, split_files: dict[str, str] | None = None, split_kind: str = "forms",
                 ways: int = WAYS, shots: int = SHOTS, num_permutations: int = NUM_PERMUTATIONS,
                 val_writers: int | None = None, task_splits: Sequence[str] = ("train",), seed: int = 0,
                 eval_seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        if not task_splits or set(task_splits) - {"train", "val"}:
            raise ValueError(f"task_splits must be a non-empty subset of train, val; got {task_splits}")
        if "val" in task_splits and val_writers is None:
            raise ValueError("task_splits with val needs val_writers: the validation writers kept out of the "
                             "training tasks")
        self.save_hyperparameters()
        self.corpus: IAMCorpus | None = None
        self.datasets: dict[str, IAMDataset] = {}
        self.split_digests: dict[str, str] = {}
        self.preprocess = HandwritingConfig()

    def _split_files(self) -> dict[str, str | Path]:
        if self.hparams.split_files:
            return dict(self.hparams.split_files)
        folder = Path(self.hparams.root) / "splits" / "aachen"
        files = {name: folder / file for name, file in _SPLIT_LISTS.items()}
        if not all(p.is_file() for p in files.values()):
            raise FileNotFoundError(f"{folder}: no Aachen split lists; pass data.split_files "
                                    "(train / val / test → list file)")
        return files

    def _dataset(self, split: str) -> IAMDataset:
        if split not in self.datasets:
            if self.corpus is None:
                self.corpus = read_iam(self.hparams.root)
            hp = self.hparams
            self.datasets[split] = IAMDataset(self.corpus, split=split, split_files=self._split_files(),
                                              split_kind=hp.split_kind, min_words=2 * hp.shots)
        return self.datasets[split]

    def _task_words(self) -> tuple[Dataset, list[str]]:
        """The words the training tasks draw from, and each one's writer (validation writers left out)."""
        hp = self.hparams
        held_out: set[str] = set()
        if "val" in hp.task_splits:
            held_out = set(sorted(set(self._dataset("val").writers))[: hp.val_writers])
        parts, writers = [], []
        for split in hp.task_splits:
            dataset = self._dataset(split)
            keep = [i for i, w in enumerate(dataset.writers) if w not in held_out]
            parts.append(Subset(_Words(dataset, self.preprocess), keep))
            writers += [dataset.writers[i] for i in keep]
        log.info("training tasks from %s: %d writers (%s held out for validation)", "+".join(hp.task_splits),
                 len(set(writers)), ", ".join(sorted(held_out)) or "none")
        return ConcatDataset(parts), writers

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        words, writers = self._task_words()
        sampler = TaskSampler(writers, ways=hp.ways, shots=hp.shots, seed=hp.seed)
        return DataLoader(words, batch_sampler=sampler, collate_fn=collate_words, num_workers=hp.num_workers)

    def _evaluation(self, split: str, max_writers: int | None) -> DataLoader:
        hp = self.hparams
        writers = WriterSplits(self._dataset(split), shots=hp.shots, num_permutations=hp.num_permutations,
                               seed=hp.eval_seed, max_writers=max_writers, preprocess=self.preprocess)
        self.split_digests[split] = writers.digest
        log.info("%s: %d writers, %d splits, split digest %s", split, len(writers), len(writers.splits),
                 writers.digest)
        return DataLoader(writers, batch_size=None, num_workers=hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation("val", self.hparams.val_writers)

    def test_dataloader(self) -> DataLoader:
        return self._evaluation("test", None)
