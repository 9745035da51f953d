"""LightningDataModule for writer-code training and evaluation on IAM-layout corpora (writer-htr.md §5,
§8.1, §9.1).

* **Training** is non-episodic (§8.1): shuffled mini-batches of the training split's words, each word
  with its writer's index among the sorted training writer ids (the rows of the code table).
* **Validation / test** follow §5 and §9.1: :func:`data.episodes.evaluation_splits` fixes
  ``num_permutations`` seeded permutations per writer (writers with fewer than 2K words skipped); in
  each, the first K = ``shots`` words are the support set and all the others the query set. One batch
  is one split (a dict, see :class:`EvalSplitDataset`), and the metrics pool every query word.
* **Hinge codes** (§8.2): the module asks for them with :meth:`WriterCodeDataModule.use_hinge`. A
  training writer's vector comes from ``hinge_train_words`` of its words (default K = 16, the first of
  a seeded permutation, so training codes are as noisy as the support-set codes of new writers; None:
  all its words); a per-dimension normaliser is fitted on those vectors (§16.5). An evaluation split's
  vector is computed from its support images alone: the Hinge function is handed a loader that only
  knows the support indices (§8.2 fairness).

Images are the stored 8-bit grey words, normalised by ``data.handwriting.normalize_image`` (×0.5, IAM
mean/std); batches pad with the normalised background. Texts stay strings; the module owns the
vocabulary (the base model's) and builds the targets.

Evaluation runs in one process: under DDP a distributed sampler would repeat splits and miscount.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.datasets.iam import MIN_WORDS, IAMDataset, SampleLevel, SplitKind, read_iam
from data.episodes import NUM_PERMUTATIONS, SHOTS, EvalSplit, evaluation_splits, group_by_writer
from data.handwriting import HandwritingConfig, collate_images, normalize_image
from data.hinge import HingeConfig, HingeNormalizer, support_hinge

__all__ = ["EvalSplitDataset", "WordDataset", "WriterCodeDataModule", "collate_words"]

log = logging.getLogger(__name__)

_AACHEN = {"train": "train.uttlist", "validation": "validation.uttlist", "test": "test.uttlist"}


def _pixels(dataset: IAMDataset, index: int) -> np.ndarray:
    """The stored `(H, W)` uint8 grey image of a dataset index."""
    return dataset[index][0].numpy()


class WordDataset(Dataset):
    """Training words as ``(image (1, H', W') normalised, text, writer index)``."""

    def __init__(self, dataset: IAMDataset, writer_index: dict[str, int],
                 preprocess: HandwritingConfig | None = None) -> None:
        self.dataset, self.writer_index = dataset, writer_index
        self.preprocess = preprocess or HandwritingConfig()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, int]:
        pixels, text, writer = self.dataset[index]
        return normalize_image(pixels, self.preprocess), text, self.writer_index[writer]


def collate_words(items: Sequence[tuple[torch.Tensor, str, int]]) -> dict[str, Any]:
    """``images`` `(B, 1, H, W)` (background-padded), ``mask`` `(B, H, W)` True on padding, ``texts``
    (B str), ``writers`` `(B,)` int64 training-writer indices."""
    images, mask = collate_images([item[0] for item in items])
    return {"images": images, "mask": mask, "texts": [item[1] for item in items],
            "writers": torch.tensor([item[2] for item in items], dtype=torch.long)}


class EvalSplitDataset(Dataset):
    """One item per evaluation split (§5): a dict with ``writer`` (str), ``permutation`` (int),
    ``support_images`` / ``query_images`` (lists of `(1, H, W)` normalised tensors), ``support_texts`` /
    ``query_texts`` / ``query_ids`` (lists of str) and ``hinge`` (`(D,)` float64 PDF of the support
    images, or None when Hinge codes are off).

    Args:
        dataset: the split's words.
        splits: from :func:`data.episodes.evaluation_splits` over ``dataset``.
        hinge: feature settings, or None for no Hinge vector.
        preprocess: the image pipeline (the base model's); default ``HandwritingConfig()``.
    """

    def __init__(self, dataset: IAMDataset, splits: Sequence[EvalSplit],
                 hinge: HingeConfig | None = None, preprocess: HandwritingConfig | None = None) -> None:
        self.dataset, self.splits, self.hinge = dataset, list(splits), hinge
        self.preprocess = preprocess or HandwritingConfig()
        self._counts: dict[int, np.ndarray] = {}  # per-image Hinge counts, shared by a writer's permutations

    def __len__(self) -> int:
        return len(self.splits)

    def __getitem__(self, k: int) -> dict[str, Any]:
        split = self.splits[k]
        support = {i: _pixels(self.dataset, i) for i in split.support}
        hinge = None
        if self.hinge is not None:  # a loader that knows the support images only
            hinge = support_hinge(support.__getitem__, split.support, self.hinge, self._counts)
        query = [self.dataset[i] for i in split.query]
        texts = self.dataset.samples
        return {"writer": split.writer, "permutation": split.permutation,
                "support_images": [normalize_image(support[i], self.preprocess) for i in split.support],
                "support_texts": [texts[i].text for i in split.support],
                "query_images": [normalize_image(pixels, self.preprocess) for pixels, _, _ in query],
                "query_texts": [text for _, text, _ in query],
                "query_ids": [texts[i].id for i in split.query],
                "hinge": None if hinge is None else torch.from_numpy(hinge)}


def _first_of_permutation(indices: list[int], ids: Sequence[str], count: int | None, seed: int,
                          writer: str) -> list[int]:
    """The first ``count`` of a writer's words in a seeded permutation (all of them for None)."""
    if count is None or count >= len(indices):
        return indices
    ordered = sorted(indices, key=lambda i: ids[i])
    key = int.from_bytes(hashlib.sha256(f"hinge-train:{writer}".encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, key])
    return [ordered[j] for j in rng.permutation(len(ordered))[:count]]


class WriterCodeDataModule(L.LightningDataModule):
    """IAM-layout words for writer codes: training batches with writer indices, evaluation splits.

    Args:
        root: the IAM-layout folder (real IAM or ``recognizers synth text`` output).
        split_files: split name → Aachen-style list; default ``ROOT/splits/aachen/{train,validation,
            test}.uttlist`` (the synthetic corpus's layout).
        split_kind: ``"forms"`` (Aachen) or ``"lines"`` (IAM task lists).
        level: ``"words"`` (the thesis's setting) or ``"lines"``.
        train_split, val_split, test_split: names in ``split_files``.
        batch_size: training words per batch (thesis 8).
        shots: K, support words per evaluation split.
        num_permutations: evaluation splits per writer (10).
        eval_seed: seed of the evaluation permutations.
        max_eval_writers: evaluate only the first writers by id (None: all); for quick validation.
        min_words: writers with fewer words are dropped from every split (2K = 32).
        hinge_train_words: words per training writer for its Hinge vector (None: all).
        num_workers: DataLoader worker processes.
        seed: seed of the training order and of the Hinge word choice.
    """

    def __init__(self, root: str, split_files: dict[str, str] | None = None, split_kind: SplitKind = "forms",
                 level: SampleLevel = "words", train_split: str = "train", val_split: str = "validation",
                 test_split: str = "test", batch_size: int = 8, shots: int = SHOTS,
                 num_permutations: int = NUM_PERMUTATIONS, eval_seed: int = 0,
                 max_eval_writers: int | None = None, min_words: int = MIN_WORDS,
                 hinge_train_words: int | None = SHOTS, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or shots < 1:
            raise ValueError(f"batch_size and shots must be >= 1, got {batch_size} and {shots}")
        self.save_hyperparameters()
        self.datasets: dict[str, IAMDataset] = {}
        self.train_writers: list[str] = []  # sorted ids: row k of the code table is train_writers[k]
        self.hinge_config: HingeConfig | None = None
        self.preprocess = HandwritingConfig()  # the base model's, set by WriterCodeModule.setup

    def _split_files(self) -> dict[str, str]:
        if self.hparams.split_files:
            return dict(self.hparams.split_files)
        folder = Path(self.hparams.root) / "splits" / "aachen"
        return {name: str(folder / file) for name, file in _AACHEN.items()}

    def dataset(self, which: str) -> IAMDataset:
        """The words of split ``which`` (``train``, ``val`` or ``test``), read once."""
        hp = self.hparams
        if which not in self.datasets:
            corpus = next(iter(self.datasets.values())).corpus if self.datasets else read_iam(hp.root)
            name = {"train": hp.train_split, "val": hp.val_split, "test": hp.test_split}[which]
            self.datasets[which] = IAMDataset(corpus, level=hp.level, split=name,
                                              split_files=self._split_files(), split_kind=hp.split_kind,
                                              min_words=hp.min_words)
            log.info("writer codes: %d %s words of %d writers", len(self.datasets[which]), which,
                     len(set(self.datasets[which].writers)))
        return self.datasets[which]

    def setup(self, stage: str) -> None:
        self.train_writers = sorted(set(self.dataset("train").writers))  # the code table, in every stage
        for which in {"fit": ("val",), "validate": ("val",), "test": ("test",)}.get(stage, ()):
            self.dataset(which)

    @property
    def train_texts(self) -> list[str]:
        """Transcriptions of the training words (a vocabulary for a model trained from scratch)."""
        return [s.text for s in self.dataset("train").samples]

    def use_hinge(self, config: HingeConfig) -> tuple[np.ndarray, HingeNormalizer]:
        """Switch Hinge vectors on for evaluation splits, and compute the training writers' codes.

        Args:
            config: the model's Hinge settings.

        Returns:
            The normalised codes `(N, D)` in ``train_writers`` order, and the normaliser fitted on them.
        """
        self.hinge_config = config
        train = self.dataset("train")
        groups, ids, hp = group_by_writer(train.writers), train.ids, self.hparams
        chosen = [_first_of_permutation(groups[w], ids, hp.hinge_train_words, hp.seed, w)
                  for w in self.train_writers]
        pdfs = np.stack([support_hinge(lambda i: _pixels(train, i), words, config)
                         for words in chosen])  # (N, D)
        normalizer = HingeNormalizer.fit(pdfs)
        return normalizer(pdfs), normalizer

    def eval_splits(self, which: str) -> list[EvalSplit]:
        """The fixed splits of ``val`` or ``test`` (optionally of the first ``max_eval_writers`` writers)."""
        hp, dataset = self.hparams, self.dataset(which)
        splits = evaluation_splits(dataset.ids, dataset.writers, shots=hp.shots,
                                   num_permutations=hp.num_permutations, seed=hp.eval_seed)
        if hp.max_eval_writers is not None:
            keep = sorted({s.writer for s in splits})[: hp.max_eval_writers]
            splits = [s for s in splits if s.writer in keep]
        return splits

    def train_dataloader(self) -> DataLoader:
        words = WordDataset(self.dataset("train"), {w: k for k, w in enumerate(self.train_writers)},
                            self.preprocess)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        workers = self.hparams.num_workers
        return DataLoader(words, batch_size=self.hparams.batch_size, shuffle=True, generator=generator,
                          collate_fn=collate_words, num_workers=workers, persistent_workers=workers > 0)

    def _eval_loader(self, which: str) -> DataLoader:
        items = EvalSplitDataset(self.dataset(which), self.eval_splits(which), self.hinge_config,
                                 self.preprocess)
        return DataLoader(items, batch_size=None, shuffle=False, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
