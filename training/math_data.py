"""LightningDataModule for PosFormer on CROHME-layout corpora, real or synthetic (posformer.md §2, §9).

Each split is a CROHME-layout root read by :class:`data.datasets.crohme.CrohmeDataset`: a folder with
``caption.txt`` and ``img/``, a folder of split folders, or a zip of either (CoMER's ``data.zip`` with
``split: 2014``). The vocabulary is the fixed 113-class CROHME one, so ``vocab_size`` is known before
any data is read (``training.cli`` links it into the model).

Batches follow §2.4: samples sorted by image area are packed into fixed batches (``batch_size`` and a
budget of ``max_area`` padded pixels), and the batch order is reshuffled every epoch. Under DDP the batch
sampler itself splits the batches between ranks (set the trainer's ``use_distributed_sampler: false``):

* training: every rank gets the same number of batches, so a rank never waits on one that has run out;
  the few batches that do not divide are left out of that epoch (a different few each epoch);
* validation and test: nothing is left out (ranks may differ by one batch), so the corpus-level ExpRate,
  summed over ranks, scores every sample exactly once, as the protocol of §7 needs.

Scale augmentation draws its factor from ``(seed, epoch, index)``; the sampler passes the epoch along with
each index (keys ``(epoch, index)``), so persistent DataLoader workers augment the right epoch too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from data.datasets.crohme import MAX_TOKENS, AreaBatchSampler, CrohmeDataset, collate_math
from data.images import MAX_AREA
from data.vocab import crohme_vocab

__all__ = ["MathBatchSampler", "MathDataModule", "collate_math_batch"]

log = logging.getLogger(__name__)


class _EpochKeyed(Dataset):
    """A :class:`CrohmeDataset` indexed by ``(epoch, index)``: the epoch selects the augmentation scale."""

    def __init__(self, dataset: CrohmeDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str]:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


def collate_math_batch(items: Sequence[tuple[torch.Tensor, torch.Tensor, str]]) -> dict:
    """:func:`data.datasets.crohme.collate_math` as a dict, with the caption tokens added.

    A dict rather than the frozen ``MathBatch`` dataclass, because Lightning's device transfer rebuilds
    dataclasses field by field.

    Args:
        items: ``(image (1, H_b, W_b), token ids (L_b,), name)`` from :class:`CrohmeDataset`.

    Returns:
        ``images`` `(B, 1, H, W)` float, zero-padded; ``mask`` `(B, H, W)` bool, True on padding; ``ids``
        (B lists of int, no ``<sos>``/``<eos>``); ``tokens`` (B tuples of str); ``names`` (B str). ``ids``
        and ``tokens`` are plain lists, so they stay on the CPU.
    """
    batch = collate_math(items)
    vocab = crohme_vocab()
    ids = [t.tolist() for t in batch.token_ids]
    return dict(images=batch.images, mask=batch.mask, ids=ids, tokens=[tuple(vocab.decode(i)) for i in ids],
                names=batch.names)


class MathBatchSampler(AreaBatchSampler):
    """Area-bucketed batches (``bucket_by_area``), reshuffled per epoch and split between DDP ranks.

    Yields lists of ``(epoch, index)`` keys (see the module docstring).

    Args:
        areas: pixel area of each sample (``CrohmeDataset.areas``).
        batch_size: most samples per batch.
        max_area: budget of padded pixels per batch.
        shuffle: shuffle the batch order, from ``(seed, epoch)``; the same order on every rank.
        seed: seed of the shuffle.
        rank: this process's rank.
        world_size: number of processes.
        even: give every rank the same number of batches (training); False keeps every batch (evaluation).
    """

    def __init__(self, areas: Sequence[int], batch_size: int, *, max_area: int = MAX_AREA,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 even: bool = True) -> None:
        super().__init__(areas, batch_size, max_area=max_area, shuffle=shuffle, seed=seed)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.rank, self.world_size, self.even = rank, world_size, even

    def _usable(self) -> int:
        total = len(self.batches)
        return total - total % self.world_size if self.even else total

    def __len__(self) -> int:
        return len(range(self.rank, self._usable(), self.world_size))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, usable = self.epoch, self._usable()
        for k, batch in enumerate(super().__iter__()):
            if k < usable and k % self.world_size == self.rank:
                yield [(epoch, i) for i in batch]


class MathDataModule(L.LightningDataModule):
    """CROHME-layout train/validation/test roots → area-bucketed, zero-padded formula batches.

    Args:
        train_dir: training root (folder or zip), e.g. ``/data/crohme/train``.
        val_dir: validation root; the protocol of §7 validates on the CROHME 2014 test set.
        test_dir: test root (``recognizers test``); defaults to ``val_dir``.
        train_split: split folder inside ``train_dir`` (e.g. ``train`` in CoMER's ``data.zip``), if any.
        val_split: split folder inside ``val_dir`` (e.g. ``2014``).
        test_split: split folder inside ``test_dir``.
        batch_size: most training samples per batch (reference 8).
        eval_batch_size: most validation/test samples per batch (reference 4).
        max_area: padded pixels per batch, and the largest image kept (reference 320,000).
        max_tokens: longest caption kept (reference 200).
        scale_aug: scale training images by ``k ~ U[0.7, 1.4]`` (reference on).
        num_workers: DataLoader worker processes.
        seed: seed of the batch order and of the augmentation.
    """

    def __init__(self, train_dir: str, val_dir: str, test_dir: str | None = None,
                 train_split: str | None = None, val_split: str | None = None, test_split: str | None = None,
                 batch_size: int = 8, eval_batch_size: int = 4, max_area: int = MAX_AREA,
                 max_tokens: int = MAX_TOKENS, scale_aug: bool = True, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        self.save_hyperparameters()
        self.vocab = crohme_vocab()
        self.datasets: dict[str, CrohmeDataset] = {}

    @property
    def vocab_size(self) -> int:
        """Classes of the CROHME vocabulary (113), linked into the model's ``vocab_size`` by the CLI."""
        return len(self.vocab)

    def _dataset(self, which: str) -> CrohmeDataset:
        hp = self.hparams
        if which not in self.datasets:
            test = (hp.test_dir, hp.test_split) if hp.test_dir else (hp.val_dir, hp.val_split)
            root, split = {"train": (hp.train_dir, hp.train_split), "val": (hp.val_dir, hp.val_split),
                           "test": test}[which]
            self.datasets[which] = CrohmeDataset(
                root, split=split, vocab=self.vocab, scale_aug=hp.scale_aug and which == "train",
                seed=hp.seed, max_tokens=hp.max_tokens, max_area=hp.max_area)
            log.info("math data: %d %s samples from %s", len(self.datasets[which]), which, root)
        return self.datasets[which]

    def setup(self, stage: str) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for which in needed.get(stage, ()):
            self._dataset(which)

    def _loader(self, which: str, batch_size: int, train: bool) -> DataLoader:
        dataset = self._dataset(which)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = MathBatchSampler(dataset.areas, batch_size, max_area=self.hparams.max_area, shuffle=train,
                                   seed=self.hparams.seed, rank=rank, world_size=world, even=train)
        workers = self.hparams.num_workers
        return DataLoader(_EpochKeyed(dataset), batch_sampler=sampler, collate_fn=collate_math_batch,
                          num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
