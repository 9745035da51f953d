"""CROHME corpora in the CoMER/PosFormer layout, area-bucketed batching and scale augmentation.

Layout (posformer.md §2.1, interfaces.md): ``ROOT/caption.txt`` with lines
``<name><whitespace><space-separated tokens>`` (parsed with ``split()``) and ``ROOT/img/<name>.bmp``
(``.png`` and ``.jpg`` are accepted too: the reference README says png while its loader opens bmp).
ROOT is a folder, or a ``.zip`` read in place (no extraction). CoMER's ``data.zip`` holds several splits
(``data/train``, ``data/2014``, ...): ``split`` picks one, matched against the folder that holds
``caption.txt``; a zip with a single ``caption.txt`` needs none.

Images are normalised to the model's convention (:mod:`data.images`): grayscale, white strokes on
black (polarity detected per image, so black-on-white renderings work too), then ``ScaleToLimitRange``
to H in [16, 256], W in [16, 1024], as a `(1, H, W)` float tensor in [0, 1].

Loading follows §2.4: samples with more than 200 tokens or more than 320,000 px (before augmentation)
are dropped with a logged warning, and so are the (unexpected) ones whose aspect ratio
``ScaleToLimitRange`` cannot keep, which the reference would stop on with an assertion. Batches are
built by :func:`bucket_by_area`; training may scale every image by ``k ~ U[0.7, 1.4]``, drawn from
``(seed, epoch, index)`` so that it is reproducible whatever the worker layout.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..images import (
    MAX_AREA,
    MAX_HEIGHT,
    MAX_WIDTH,
    MIN_HEIGHT,
    MIN_WIDTH,
    ImageError,
    Polarity,
    image_to_tensor,
    load_image,
    resize_image,
    scale_to_limit_range,
    to_white_on_black,
)
from ..vocab import Vocabulary, crohme_vocab

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_TOKENS",
    "SCALE_RANGE",
    "AreaBatchSampler",
    "CorpusError",
    "CrohmeDataset",
    "MathBatch",
    "MathSample",
    "augmentation_scale",
    "bucket_by_area",
    "collate_math",
    "filter_samples",
    "scan_crohme",
]

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg")  # tried in this order for img/<name>
MAX_TOKENS = 200  # longer captions are dropped (§2.4)
SCALE_RANGE = (0.7, 1.4)  # ScaleAugmentation's k ~ U[low, high] (§2.4)

_log = logging.getLogger(__name__)


class CorpusError(ValueError):
    """A corpus that does not follow the layout; the message names the file (and line) and the problem."""


@dataclass(frozen=True)
class MathSample:
    """One labelled formula image of a CROHME-layout corpus."""

    name: str  # the image stem, first field of its caption line
    tokens: tuple[str, ...]  # the caption's tokens, as written
    image: str  # file path, or member name inside the zip
    width: int  # px, of the stored image
    height: int  # px

    @property
    def area(self) -> int:
        return self.width * self.height


class _Tree:
    """``caption.txt`` + ``img/`` in a folder or inside a zip; zip handles are opened per process."""

    def __init__(self, root: str | Path, split: str | None) -> None:
        self.root = Path(root)
        self.is_zip = self.root.is_file() and zipfile.is_zipfile(self.root)
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1
        if self.is_zip:
            members = set(self._archive().namelist())
            self.base = _locate_in_zip(self.root, members, split)
            self.images = {m for m in members if m.startswith(f"{self.base}img/") and not m.endswith("/")}
        elif self.root.is_dir():
            folder = self.root / split if split else self.root
            if not (folder / "caption.txt").is_file():
                found = sorted(str(p.parent.relative_to(self.root)) for p in self.root.rglob("caption.txt"))
                raise CorpusError(f"{folder}: no caption.txt (CROHME layout); splits here: {found or 'none'}")
            self.base = f"{folder}{os.sep}"
            img = folder / "img"
            self.images = {str(p) for p in img.iterdir()} if img.is_dir() else set()
        else:
            raise CorpusError(f"{self.root}: neither a folder nor a zip file")
        self.caption = f"{self.root}:{self.base}caption.txt" if self.is_zip else f"{self.base}caption.txt"

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():  # a forked worker needs its own file handle
            self._zip = zipfile.ZipFile(self.root)
            self._pid = os.getpid()
        return self._zip

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None, "_pid": -1}

    def read(self, key: str) -> bytes:
        return self._archive().read(key) if self.is_zip else Path(key).read_bytes()

    def caption_text(self) -> str:
        raw = self.read(f"{self.base}caption.txt")
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{self.caption}: not UTF-8 ({exc})") from exc

    def image_for(self, name: str) -> str | None:
        for suffix in IMAGE_SUFFIXES:
            key = f"{self.base}img/{name}{suffix}" if self.is_zip else f"{self.base}img{os.sep}{name}{suffix}"
            if key in self.images:
                return key
        return None

    def label(self, key: str) -> str:
        return f"{self.root}:{key}" if self.is_zip else key


def _locate_in_zip(root: Path, members: set[str], split: str | None) -> str:
    """The member prefix (``""`` or ``"data/2014/"``) of the folder holding the chosen caption.txt."""
    folders = sorted(str(PurePosixPath(m).parent) for m in members if PurePosixPath(m).name == "caption.txt")
    folders = ["" if f == "." else f for f in folders]
    chosen = folders
    if split is not None:
        wanted = split.strip("/")
        chosen = [f for f in folders if f == wanted or f.endswith(f"/{wanted}")]
    if len(chosen) != 1:
        what = "no caption.txt" if not folders else f"caption.txt in {folders}"
        need = f"split {split!r} matches {len(chosen)} of them" if split is not None else "pass split="
        raise CorpusError(f"{root}: {what}; {need}")
    return f"{chosen[0]}/" if chosen[0] else ""


def _parse_captions(tree: _Tree, vocab: Vocabulary) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line number, name, tokens) per caption line, validated."""
    entries: list[tuple[int, str, tuple[str, ...]]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(tree.caption_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{tree.caption}:{number}"
        name, tokens = fields[0], tuple(fields[1:])
        if not tokens:
            raise CorpusError(f"{where}: expected '<name> <tokens...>', got {line.strip()[:80]!r}")
        if "/" in name or "\\" in name or name in (".", ".."):
            raise CorpusError(f"{where}: image name {name!r} must be a plain file stem")
        if name in seen:
            raise CorpusError(f"{where}: {name!r} already captioned on line {seen[name]}")
        unknown = vocab.unknown(tokens)
        if unknown:
            raise CorpusError(f"{where}: tokens not in the vocabulary: {' '.join(unknown)}")
        seen[name] = number
        entries.append((number, name, tokens))
    if not entries:
        raise CorpusError(f"{tree.caption}: no caption lines")
    return entries


def scan_crohme(root: str | Path, *, split: str | None = None,
                vocab: Vocabulary | None = None) -> list[MathSample]:
    """Read the captions of a CROHME-layout folder or zip and find each image (sizes from headers).

    Args:
        root: a folder holding ``caption.txt`` and ``img/``, a folder above such split folders (with
            ``split``), or a ``.zip`` of either.
        split: the split folder, e.g. ``"2014"`` (matches ``data/2014`` inside CoMER's zip).
        vocab: the vocabulary every token must belong to; default :func:`crohme_vocab`.

    Returns:
        The samples in caption order.

    Raises:
        CorpusError: naming the file (and line): no or ambiguous caption.txt, a malformed or duplicate
            caption line, unknown tokens, a missing or unreadable image.
    """
    return _scan_tree(_Tree(root, split), vocab or crohme_vocab())


def _scan_tree(tree: _Tree, vocab: Vocabulary) -> list[MathSample]:
    samples = []
    for number, name, tokens in _parse_captions(tree, vocab):
        key = tree.image_for(name)
        if key is None:
            tried = ", ".join(f"img/{name}{s}" for s in IMAGE_SUFFIXES)
            raise CorpusError(f"{tree.caption}:{number}: no image for {name!r} (tried {tried})")
        try:
            with Image.open(io.BytesIO(tree.read(key))) as image:
                width, height = image.size  # the header is enough
        except (OSError, Image.DecompressionBombError) as exc:
            raise CorpusError(f"{tree.label(key)}: not a readable image ({exc})") from exc
        samples.append(MathSample(name, tokens, key, width, height))
    return samples


def filter_samples(samples: Sequence[MathSample], *, max_tokens: int = MAX_TOKENS,
                   max_area: int = MAX_AREA) -> list[MathSample]:
    """Drop, with a logged warning each, samples the reference drops (§2.4), plus illegal aspect ratios.

    Args:
        samples: scanned samples.
        max_tokens: most tokens in a caption.
        max_area: most pixels in an image, before augmentation.

    Returns:
        The kept samples, in order.
    """
    low, high = MIN_HEIGHT / MAX_WIDTH, MAX_HEIGHT / MIN_WIDTH
    kept = []
    for sample in samples:
        if len(sample.tokens) > max_tokens:
            _log.warning("dropped %s: %d tokens > %d", sample.name, len(sample.tokens), max_tokens)
        elif sample.area > max_area:
            _log.warning("dropped %s: %dx%d px > %d px", sample.name, sample.width, sample.height, max_area)
        elif not low <= sample.height / sample.width <= high:
            _log.warning("dropped %s: aspect ratio H/W %.4g outside [%g, %g]", sample.name,
                         sample.height / sample.width, low, high)
        else:
            kept.append(sample)
    return kept


def augmentation_scale(seed: int, epoch: int, index: int,
                       scale_range: tuple[float, float] = SCALE_RANGE) -> float:
    """The scale factor ``k ~ U[low, high]`` of one sample in one epoch, a pure function of its arguments."""
    return float(np.random.default_rng([seed, epoch, index]).uniform(*scale_range))


class CrohmeDataset(Dataset):
    """A CROHME-layout corpus as ``(image (1, H, W) float in [0, 1], token ids (L,) int64, name)``.

    Token ids have no ``<sos>``/``<eos>``; the image is white on black and within the size limits.

    Args:
        root: folder or zip (see :func:`scan_crohme`).
        split: split folder inside ``root``.
        vocab: vocabulary for the ids; default :func:`crohme_vocab`.
        scale_aug: apply ``ScaleAugmentation`` (training only).
        seed: seed of the augmentation; with :meth:`set_epoch` it fixes every scale factor.
        polarity: ``"auto"`` (per image) or the corpus's known polarity.
        max_tokens: longer captions are dropped.
        max_area: larger images are dropped.

    Raises:
        CorpusError: see :func:`scan_crohme`; also when every sample is filtered out.
    """

    def __init__(self, root: str | Path, *, split: str | None = None, vocab: Vocabulary | None = None,
                 scale_aug: bool = False, seed: int = 0, polarity: Polarity = "auto",
                 max_tokens: int = MAX_TOKENS, max_area: int = MAX_AREA) -> None:
        self.vocab = vocab or crohme_vocab()
        self._tree = _Tree(root, split)
        scanned = _scan_tree(self._tree, self.vocab)
        self.samples = filter_samples(scanned, max_tokens=max_tokens, max_area=max_area)
        if not self.samples:
            raise CorpusError(f"{self._tree.caption}: all {len(scanned)} samples were filtered out")
        self.scale_aug, self.seed, self.polarity = scale_aug, seed, polarity
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation scales :meth:`__getitem__` draws."""
        self.epoch = epoch

    @property
    def areas(self) -> list[int]:
        """Pixel area of each stored image (before augmentation), for :func:`bucket_by_area`."""
        return [s.area for s in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        sample = self.samples[index]
        label = self._tree.label(sample.image)
        try:
            image = to_white_on_black(load_image(self._tree.read(sample.image)), self.polarity)
            if self.scale_aug:
                image = resize_image(image, augmentation_scale(self.seed, self.epoch, index))
            image = scale_to_limit_range(image)
        except (ImageError, OSError) as exc:
            raise CorpusError(f"{label}: {exc}") from exc
        ids = torch.tensor(self.vocab.encode(sample.tokens), dtype=torch.long)  # (L,)
        return image_to_tensor(image), ids, sample.name


def bucket_by_area(areas: Sequence[int], batch_size: int, *, max_area: int = MAX_AREA) -> list[list[int]]:
    """Pack samples sorted by area into batches (§2.4), in ascending order of area.

    A batch is closed when it holds ``batch_size`` samples or when adding the next (larger) sample
    would make ``max area in batch x count`` exceed ``max_area``, so every batch of two or more
    stays within the budget; a single sample above the budget gets a batch of its own.

    Args:
        areas: pixel area of each sample.
        batch_size: most samples per batch (reference: train 8, val 4, test 1).
        max_area: budget of padded pixels per batch.

    Returns:
        Lists of indices; every index appears exactly once.
    """
    if batch_size < 1 or max_area < 1:
        raise ValueError(f"batch_size and max_area must be >= 1, got {batch_size} and {max_area}")
    order = sorted(range(len(areas)), key=lambda i: (areas[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted ascending, so areas[i] is the largest of current + [i]
        if current and (len(current) == batch_size or (len(current) + 1) * areas[i] > max_area):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class AreaBatchSampler(Sampler[list[int]]):
    """Batches of :func:`bucket_by_area`, in an order shuffled per epoch (the batches' content is fixed).

    Args:
        areas: pixel area of each sample (``CrohmeDataset.areas``).
        batch_size: most samples per batch.
        max_area: budget of padded pixels per batch.
        shuffle: shuffle the batch order, from ``(seed, epoch)``.
        seed: seed of the shuffle.
    """

    def __init__(self, areas: Sequence[int], batch_size: int, *, max_area: int = MAX_AREA,
                 shuffle: bool = True, seed: int = 0) -> None:
        self.batches = bucket_by_area(areas, batch_size, max_area=max_area)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batch order :meth:`__iter__` yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.arange(len(self.batches))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.batches))
        for k in order:
            yield list(self.batches[k])


@dataclass(frozen=True)
class MathBatch:
    """A padded batch of formula images."""

    images: torch.Tensor  # (B, 1, H, W) float, zero (black) padding at the bottom and right
    mask: torch.Tensor  # (B, H, W) bool, True on padding
    token_ids: list[torch.Tensor]  # B tensors (L_b,) int64, no <sos>/<eos>
    names: list[str]


def collate_math(items: Sequence[tuple[torch.Tensor, torch.Tensor, str]]) -> MathBatch:
    """Zero-pad images to the batch's largest H and W (§2.4 collate; black = background).

    Args:
        items: ``(image (1, H_b, W_b), token ids (L_b,), name)`` from :class:`CrohmeDataset`.

    Returns:
        The batch, with ``mask`` True exactly on padding.
    """
    if not items:
        raise ValueError("collate_math needs at least one item")
    height = max(image.shape[1] for image, _, _ in items)
    width = max(image.shape[2] for image, _, _ in items)
    images = torch.zeros(len(items), 1, height, width)  # (B, 1, H, W)
    mask = torch.ones(len(items), height, width, dtype=torch.bool)  # (B, H, W)
    for b, (image, _, _) in enumerate(items):
        images[b, :, : image.shape[1], : image.shape[2]] = image
        mask[b, : image.shape[1], : image.shape[2]] = False
    return MathBatch(images, mask, [ids for _, ids, _ in items], [name for _, _, name in items])
