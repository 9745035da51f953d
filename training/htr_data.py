"""LightningDataModule for the handwriting base models on IAM-layout corpora, real or synthetic
(writer-htr.md §3, §4.1, §15).

The corpus is read once (``data.datasets.iam.read_iam``); each split is an :class:`IAMDataset` over the
same corpus, selected by split lists: Aachen/RWTH form-id lists by default, looked for under
``ROOT/splits/aachen/{train,validation,test}.uttlist`` (where ``recognizers synth text`` writes them;
copy the Aachen lists there for real IAM, or name the files with ``split_files``).

The character vocabulary (``<pad>``, ``<sos>``, ``<eos>`` + the sorted characters of the training
labels, §4) is built at construction, so LightningCLI can link ``vocab_size`` into the model; the
module takes the vocabulary itself from the DataModule and stores it in its checkpoints. Batches hold
the texts, not ids: the module encodes them with *its* vocabulary, so a resumed run can never pair the
weights with a different character mapping.

Pipeline per sample: 8-bit grey image → (training only) :class:`data.augment.HandwritingAugment` seeded
by ``(seed, epoch, index)`` → ``normalize_image`` (×0.5, IAM mean/std) → per-batch padding with the
normalised background (``collate_images``, §16.2).

Batching: samples sorted by their bounding-box area (from ``words.txt``/``lines.txt``, so no image is
opened for it) are packed into fixed batches, whose order is reshuffled every epoch; under DDP the batch
sampler splits the batches between ranks (set the trainer's ``use_distributed_sampler: false``): equal
counts per rank in training, every sample exactly once in validation and test. That sampler is
``training.math_data.MathBatchSampler``, shared with PosFormer; it yields ``(epoch, index)`` keys, so
persistent workers augment the right epoch.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from data.datasets.iam import CorpusError, IAMCorpus, IAMDataset, SampleLevel, SplitKind, read_iam
from data.handwriting import (
    BACKGROUND,
    SCALE,
    CharVocabulary,
    HandwritingConfig,
    collate_images,
    normalize_image,
)

from .math_data import MathBatchSampler

__all__ = ["DEFAULT_SPLITS", "HandwritingDataModule", "collate_handwriting", "default_split_files",
           "model_vocabulary"]

log = logging.getLogger(__name__)

# split name -> file name under ROOT/splits/aachen (the Aachen/RWTH names, as the thesis's htr repository)
DEFAULT_SPLITS = {"train": "train.uttlist", "val": "validation.uttlist", "test": "test.uttlist"}

Item = tuple[torch.Tensor, str, str]  # image (1, H, W) normalised, text, sample id


def default_split_files(root: str | Path) -> dict[str, Path]:
    """The Aachen lists under ``ROOT/splits/aachen`` that exist, by split name (train, val, test)."""
    folder = Path(root) / "splits" / "aachen"
    return {name: folder / file for name, file in DEFAULT_SPLITS.items() if (folder / file).is_file()}


def collate_handwriting(items: Sequence[Item], background: float = BACKGROUND) -> dict:
    """Pad a batch (``collate_images``). Returns ``images`` `(B, 1, H, W)`, ``mask`` `(B, H, W)` (True
    on padding), ``texts`` (B str) and ``ids`` (B str)."""
    images, mask = collate_images([image for image, _, _ in items], background)
    return dict(images=images, mask=mask, texts=[t for _, t, _ in items], ids=[i for _, _, i in items])


class _Items(Dataset):
    """Samples of an :class:`IAMDataset` keyed by ``(epoch, position)``: the epoch seeds the augmentation."""

    def __init__(self, dataset: IAMDataset, indices: Sequence[int], preprocess: HandwritingConfig,
                 augment=None, seed: int = 0) -> None:
        self.dataset, self.indices, self.preprocess = dataset, list(indices), preprocess
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]) -> Item:
        epoch, position = key
        index = self.indices[position]
        pixels, text, _ = self.dataset[index]  # (H, W) uint8
        pixels = pixels.numpy()
        if self.augment is not None:
            pixels = self.augment(pixels, seed=(self.seed, epoch, index))
        return normalize_image(pixels, self.preprocess), text, self.dataset.samples[index].id

    def areas(self) -> list[int]:
        """Bounding-box area of each sample (IAM crops each image to its box)."""
        corpus, level = self.dataset.corpus, self.dataset.level
        records = corpus.words if level == "words" else corpus.lines
        boxes = [records[self.dataset.samples[i].id].box for i in self.indices]
        return [max(1, box.width) * max(1, box.height) for box in boxes]


def model_vocabulary(path: str | Path) -> CharVocabulary:
    """The character vocabulary stored with a handwriting model (bundle or project checkpoint).

    Raises:
        CheckpointError: unreadable, not a handwriting model, or without a vocabulary.
    """
    from recognizers.checkpoint import CheckpointError, read_bundle

    bundle = read_bundle(path)
    if bundle.model != "handwriting" or not bundle.extras.get("vocab"):
        raise CheckpointError(f"{path}: not a handwriting model with a character vocabulary "
                              f"(model {bundle.model!r})")
    return CharVocabulary.from_json(bundle.extras["vocab"])


class HandwritingDataModule(L.LightningDataModule):
    """IAM-layout corpus → augmented, area-bucketed, background-padded batches of word or line images.

    Args:
        root: the IAM-layout folder (``ascii/``, ``words/``, ``lines/``, ``xml/``), e.g. ``/data/IAM`` or
            ``corpora/text``.
        level: ``words`` or ``lines``.
        split_files: split name (``train``, ``val``, optional ``test``) → list file; default: the Aachen
            lists under ``ROOT/splits/aachen`` (:data:`DEFAULT_SPLITS`).
        split_kind: ``forms`` (Aachen lists of form ids) or ``lines`` (IAM task lists of line ids).
        min_words: writers with fewer words in a split are dropped from it. Default 0: the base model is
            writer-independent; the 2K = 32 filter of §3.3 belongs to episodic adaptation.
        batch_size: most training samples per batch (thesis default 8).
        eval_batch_size: most validation/test samples per batch (default: ``batch_size``).
        max_area: budget of bounding-box pixels (at scan resolution) per batch.
        augment: augment training images (§15).
        augment_recipe: ``full`` or ``thesis`` (``data.augment``).
        max_val_samples: validate on this many samples (a fixed, seeded subset); 0 = all.
        scale: resize factor of the image pipeline (``HandwritingConfig.scale``, saved with the model so
            that inference resizes alike). The thesis's 0.5 suits IAM's 300 dpi scans; with ResNet-18's
            32-pixel feature cells, smaller writing leaves too few cells per character.
        num_workers: DataLoader worker processes.
        seed: seed of the batch order, the validation subset and the augmentation.
        vocabulary: a trained handwriting model (``.safetensors`` bundle or project ``.ckpt``) whose
            character vocabulary replaces the one of the training labels, so that the model (given as
            the module's ``init_from``) can go on training on a corpus with characters it lacks; training
            samples with such characters are left out, and their number is logged.

    Raises:
        CorpusError: no split lists, or the corpus or lists do not follow the IAM layout (the message
            names the file).
        CheckpointError: ``vocabulary`` is not a readable handwriting model.
    """

    def __init__(self, root: str, level: SampleLevel = "words", split_files: dict[str, str] | None = None,
                 split_kind: SplitKind = "forms", min_words: int = 0, batch_size: int = 8,
                 eval_batch_size: int | None = None, max_area: int = 4_000_000, augment: bool = True,
                 augment_recipe: str = "full", max_val_samples: int = 0, scale: float = SCALE,
                 num_workers: int = 0, seed: int = 0, vocabulary: str | None = None) -> None:
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        self.save_hyperparameters()
        self.split_files = {k: str(v) for k, v in (split_files or default_split_files(root)).items()}
        missing = {"train", "val"} - set(self.split_files)
        if missing:
            raise CorpusError(f"{root}: no {' or '.join(sorted(missing))} split list (looked for "
                              f"{Path(root) / 'splits' / 'aachen'}/*.uttlist; pass data.split_files)")
        self.preprocess = HandwritingConfig(scale=scale)
        self.corpus: IAMCorpus = read_iam(root)
        self.datasets: dict[str, IAMDataset] = {"train": self._split("train")}
        train = self.datasets["train"].samples
        self._left_out: set[int] = set()  # training samples the vocabulary cannot spell
        if vocabulary:
            self.vocab = model_vocabulary(vocabulary)
            self._left_out = {i for i, sample in enumerate(train) if self.vocab.unknown(sample.text)}
            if len(self._left_out) == len(train):
                raise CorpusError(f"{root}: the vocabulary of {vocabulary} spells none of the training "
                                  f"{level} (it has {len(self.vocab.chars)} characters)")
            missing = sorted({c for i in self._left_out for c in self.vocab.unknown(train[i].text)})
            log.info("handwriting data: vocabulary of %s; %d training %s left out for characters it "
                     "lacks (%s)", vocabulary, len(self._left_out), level, "".join(missing) or "none")
        else:
            self.vocab = CharVocabulary.from_texts(s.text for s in train)
        log.info("handwriting data: %d training %s, vocabulary of %d classes",
                 len(train) - len(self._left_out), level, len(self.vocab))

    @property
    def vocab_size(self) -> int:
        """Classes of the training vocabulary, linked into the model's ``vocab_size`` by ``training.cli``."""
        return len(self.vocab)

    def _split(self, name: str) -> IAMDataset:
        hp = self.hparams
        return IAMDataset(self.corpus, level=hp.level, split=name, split_files=self.split_files,
                          split_kind=hp.split_kind, min_words=hp.min_words)

    def _dataset(self, which: str) -> IAMDataset:
        name = which if which != "test" or "test" in self.split_files else "val"
        if name not in self.datasets:
            self.datasets[name] = self._split(name)
            log.info("handwriting data: %d %s %s", len(self.datasets[name]), name, self.hparams.level)
        return self.datasets[name]

    def setup(self, stage: str) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for which in needed.get(stage, ()):
            self._dataset(which)

    def _items(self, which: str) -> _Items:
        hp, dataset = self.hparams, self._dataset(which)
        indices = range(len(dataset))
        if which == "train" and self._left_out:
            indices = [i for i in indices if i not in self._left_out]
        if which == "val" and 0 < hp.max_val_samples < len(dataset):
            indices = sorted(random.Random(hp.seed).sample(indices, hp.max_val_samples))
        augment = None
        if which == "train" and hp.augment:
            from data.augment import HandwritingAugment  # albumentations: imported only when used

            augment = HandwritingAugment(hp.augment_recipe)
        return _Items(dataset, indices, self.preprocess, augment, hp.seed)

    def _loader(self, which: str) -> DataLoader:
        hp, items, train = self.hparams, self._items(which), which == "train"
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        size = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
        sampler = MathBatchSampler(items.areas(), size, max_area=hp.max_area, shuffle=train, seed=hp.seed,
                                   rank=rank, world_size=world, even=train)
        return DataLoader(items, batch_sampler=sampler, collate_fn=collate_handwriting,
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
