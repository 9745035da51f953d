"""Handwriting images and characters for the writer-adaptive recognizer (writer-htr.md §4, §4.1, §16.2).

One pipeline serves training and inference, so the model always sees the same numbers:

1. an 8-bit grey image, dark ink on light paper (IAM's polarity; :func:`load_handwriting` checks and
   fixes the polarity of user images, training data is taken as it is);
2. scale ×0.5 (the thesis's ``dpi_adjusting``: IAM is scanned at 300 dpi), bilinear;
3. [0, 1], then ``(x − 0.8275) / 0.2314`` (the thesis's IAM mean and std). Ink stays dark;
4. per batch, pad every image to the batch's largest height and width on the bottom and right with the
   **normalised background** (white paper: ``(1 − mean) / std`` ≈ 0.746), plus a padding mask.

Step 4 deliberately deviates from the thesis code, which pads with zeros *after* normalisation: a zero
there is the mean grey, neither paper nor ink (pitfall §16.2).

:class:`CharVocabulary` maps characters to ids: ``<pad>`` = 0, ``<sos>`` = 1, ``<eos>`` = 2, then the
sorted characters of the training labels (the space included for lines). The special tokens use the
project-wide spellings of ``data.vocab.SPECIAL_TOKENS``; the design's ``<PAD>``/``<SOS>``/``<EOS>`` are
the same three ids. Characters outside the vocabulary are reported (:class:`~data.vocab.VocabularyError`),
never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from .images import (
    MAX_INPUT_PIXELS,
    ImageError,
    ImageSource,
    describe_source,
    detect_polarity,
    load_image,
    otsu_threshold,
)
from .vocab import SPECIAL_TOKENS, VocabularyError

__all__ = [
    "BACKGROUND",
    "MEAN",
    "SCALE",
    "STD",
    "CharVocabulary",
    "HandwritingConfig",
    "TargetBatch",
    "collate_images",
    "load_handwriting",
    "load_handwriting_grey",
    "normalize_image",
]

SCALE = 0.5  # resize factor of the thesis's ``dpi_adjusting`` (IAM: 300 dpi)
MEAN = 0.8275  # IAM grey mean on the [0, 1] scale (thesis ``htr/data.py``)
STD = 0.2314  # IAM grey standard deviation on the [0, 1] scale
BACKGROUND = (1.0 - MEAN) / STD  # white paper after normalisation (≈ 0.7455): the padding value

HandwritingPolarity = Literal["auto", "dark_on_light", "light_on_dark"]


@dataclass(frozen=True)
class HandwritingConfig:
    """Settings of the image pipeline (module docstring). The defaults are the thesis's values."""

    scale: float = SCALE  # resize factor applied first
    mean: float = MEAN  # normalisation on the [0, 1] scale
    std: float = STD
    polarity: HandwritingPolarity = "auto"  # user images: "auto" inverts light ink on dark paper
    min_contrast: int = 16  # grey levels between ink and paper (of 255); less is a blank image
    max_side: int = 4096  # px after scaling; a longer side is shrunk to it (keeps huge photos tractable)
    max_pixels: int = MAX_INPUT_PIXELS  # larger inputs are refused before decoding

    def __post_init__(self) -> None:
        if not self.scale > 0 or not self.std > 0 or self.max_side < 1:
            raise ValueError(f"HandwritingConfig: scale and std must be > 0 and max_side >= 1 ({self})")
        if self.polarity not in ("auto", "dark_on_light", "light_on_dark"):
            raise ValueError(f"polarity must be auto, dark_on_light or light_on_dark, got {self.polarity!r}")

    @property
    def background(self) -> float:
        """The normalised value of white paper, used to pad batches."""
        return (1.0 - self.mean) / self.std


_DEFAULT = HandwritingConfig()


def normalize_image(pixels: np.ndarray | Tensor | Image.Image,
                    config: HandwritingConfig = _DEFAULT) -> Tensor:
    """The numeric pipeline: uint8 grey (dark ink on light) → scaled, normalised `(1, H', W')` float32.

    No polarity check: training data is read as it is stored (IAM is dark on light).

    Args:
        pixels: `(H, W)` uint8 grey pixels (array or tensor) or an ``L`` image.
        config: scale and normalisation.

    Returns:
        `(1, round(H·scale), round(W·scale))` float32 (each side at least 1, the longest at most
        ``config.max_side``); white paper maps to ``config.background``.
    """
    if isinstance(pixels, Tensor):
        pixels = pixels.detach().cpu().numpy()
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    if image.mode != "L":
        image = image.convert("L")
    width, height = image.width * config.scale, image.height * config.scale
    shrink = min(1.0, config.max_side / max(width, height))  # 1 unless a side would exceed max_side
    size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    grey = torch.from_numpy(np.array(image, dtype=np.float32)) / 255.0  # (H', W') in [0, 1]
    return ((grey - config.mean) / config.std).unsqueeze(0)  # (1, H', W')


def _check_contrast(pixels: np.ndarray, name: str, min_contrast: int) -> None:
    """Refuse blank images: one grey level, or ink and paper closer than ``min_contrast`` levels."""
    threshold = otsu_threshold(pixels)
    dark = pixels <= threshold
    if dark.all() or not dark.any():
        raise ImageError(f"{name}: blank image (a single grey level, no handwriting)")
    spread = float(np.median(pixels[~dark])) - float(np.median(pixels[dark]))
    if spread < min_contrast:
        raise ImageError(f"{name}: blank image (ink and paper differ by {spread:.0f} < {min_contrast} "
                         "grey levels)")


def load_handwriting_grey(source: ImageSource, config: HandwritingConfig = _DEFAULT) -> np.ndarray:
    """A user image → `(H, W)` uint8 grey, dark ink on light paper (before scaling).

    Steps: :func:`data.images.load_image` (EXIF rotation, grey), a blank check, the polarity (light
    ink on dark paper is inverted when ``config.polarity`` is ``"auto"``: the larger Otsu class is the
    paper).

    Raises:
        ImageError: missing, unreadable, empty or blank input; the message names it.
    """
    name = describe_source(source)
    image = load_image(source, max_pixels=config.max_pixels)
    pixels = np.asarray(image, dtype=np.uint8)
    _check_contrast(pixels, name, config.min_contrast)
    invert = config.polarity == "light_on_dark" or (
        config.polarity == "auto" and detect_polarity(pixels) == "white_on_black")
    return np.asarray(ImageOps.invert(image), dtype=np.uint8) if invert else pixels


def load_handwriting(source: ImageSource, config: HandwritingConfig = _DEFAULT) -> Tensor:
    """A user image (path, bytes, PIL image, array or tensor) → the model's normalised `(1, H, W)`:
    :func:`load_handwriting_grey`, then :func:`normalize_image`.

    Raises:
        ImageError: missing, unreadable, empty or blank input; the message names it.
    """
    return normalize_image(load_handwriting_grey(source, config), config)


def collate_images(images: Sequence[Tensor], background: float = BACKGROUND) -> tuple[Tensor, Tensor]:
    """Pad normalised images to one batch, bottom and right, with the normalised background.

    Args:
        images: B tensors `(1, H_b, W_b)` from :func:`normalize_image` / :func:`load_handwriting`.
        background: the padding value (``HandwritingConfig.background``).

    Returns:
        images `(B, 1, H, W)` and mask `(B, H, W)` bool, True on padding; H, W the largest sizes.
    """
    if not images:
        raise ValueError("collate_images needs at least one image")
    for b, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != 1:
            raise ValueError(f"image {b}: expected (1, H, W), got {tuple(image.shape)}")
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    first = images[0]
    batch = first.new_full((len(images), 1, height, width), background)  # (B, 1, H, W)
    mask = torch.ones(len(images), height, width, dtype=torch.bool, device=first.device)  # (B, H, W)
    for b, image in enumerate(images):
        batch[b, :, : image.shape[1], : image.shape[2]] = image
        mask[b, : image.shape[1], : image.shape[2]] = False
    return batch, mask


@dataclass(frozen=True)
class TargetBatch:
    """Teacher-forcing tensors of a batch of texts (writer-htr.md §4).

    Attributes:
        inputs: `(B, T)` decoder inputs ``[<sos>] + targets[:-1]``.
        targets: `(B, T)` character ids, then ``<eos>``, right-padded with ``<pad>``.
        lengths: `(B,)` characters per text plus one (the ``<eos>``).
    """

    inputs: Tensor
    targets: Tensor
    lengths: Tensor


class CharVocabulary:
    """Characters ↔ ids: ``<pad>`` = 0, ``<sos>`` = 1, ``<eos>`` = 2, then one id per character.

    Args:
        chars: the characters in id order (single code points, no duplicates).

    Raises:
        ValueError: an empty list, a duplicate, or an entry that is not exactly one character.

    Examples:
        >>> vocab = CharVocabulary.from_texts(["the", "cat"])
        >>> vocab.chars, vocab.encode("hat")
        (('a', 'c', 'e', 'h', 't'), [6, 3, 7])
        >>> vocab.decode([6, 3, 7, 2, 0])
        'hat'
    """

    pad_id = 0
    sos_id = 1
    eos_id = 2

    def __init__(self, chars: Iterable[str]) -> None:
        chars = tuple(chars)
        if not chars:
            raise ValueError("a character vocabulary needs at least one character")
        index: dict[str, int] = {}
        for position, char in enumerate(chars):
            if not isinstance(char, str) or len(char) != 1:
                raise ValueError(f"entry {position} ({char!r}) is not a single character")
            if char in index:
                raise ValueError(f"character {char!r} appears twice")
            index[char] = position + len(SPECIAL_TOKENS)
        self._chars = chars
        self._index = index

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharVocabulary:
        """The sorted set of characters of the training labels (writer-htr.md §4)."""
        return cls(sorted(set().union(*(set(t) for t in texts))))

    @classmethod
    def from_json(cls, text: str) -> CharVocabulary:
        """Inverse of :meth:`to_json` (a JSON list of every token in id order, specials first).

        Raises:
            ValueError: not JSON, not a list, wrong specials, or an invalid character list.
        """
        try:
            tokens = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"character vocabulary is not JSON: {exc}") from exc
        if not isinstance(tokens, list) or tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"character vocabulary must be a JSON list starting with {list(SPECIAL_TOKENS)}")
        return cls(tokens[len(SPECIAL_TOKENS):])

    def to_json(self) -> str:
        """JSON list of every token in id order, specials first (stored in model files)."""
        return json.dumps(list(self.tokens), ensure_ascii=False)

    def __len__(self) -> int:
        """Number of classes, specials included (the classifier's output size V)."""
        return len(self._chars) + len(SPECIAL_TOKENS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocabulary) and self._chars == other._chars

    def __hash__(self) -> int:
        return hash(self._chars)

    def __repr__(self) -> str:
        return f"CharVocabulary({len(self)} classes: {''.join(self._chars[:20])!r}...)"

    @property
    def chars(self) -> tuple[str, ...]:
        """The regular characters in id order."""
        return self._chars

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every token in id order, specials first."""
        return SPECIAL_TOKENS + self._chars

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that the vocabulary lacks, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self._index))

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text`` (no ``<sos>``/``<eos>``).

        Raises:
            VocabularyError: (a KeyError) naming every character outside the vocabulary.
        """
        missing = self.unknown(text)
        if missing:
            raise VocabularyError(f"characters not in the vocabulary: {' '.join(map(repr, missing))} "
                                  f"(in {text!r})")
        return [self._index[c] for c in text]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text of an id sequence: stops at the first ``<eos>``, skips ``<pad>``/``<sos>``.

        Tokens after ``<eos>`` are never part of the text (pitfall §16.3), and an ``<eos>`` first gives
        the empty string.

        Raises:
            ValueError: an id outside the vocabulary.
        """
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        chars = []
        for i in map(int, ids):
            if not 0 <= i < len(self):
                raise ValueError(f"id {i} is outside the vocabulary [0, {len(self)})")
            if i == self.eos_id:
                break
            if i >= len(SPECIAL_TOKENS):
                chars.append(self._chars[i - len(SPECIAL_TOKENS)])
        return "".join(chars)

    def targets(self, texts: Sequence[str]) -> TargetBatch:
        """Teacher-forcing inputs and targets of a batch (:class:`TargetBatch`).

        Raises:
            VocabularyError: a text holds characters outside the vocabulary (all of them are named).
        """
        if not texts:
            raise ValueError("targets needs at least one text")
        encoded = [[*self.encode(t), self.eos_id] for t in texts]
        steps = max(len(e) for e in encoded)
        targets = torch.full((len(texts), steps), self.pad_id, dtype=torch.long)  # (B, T)
        for b, ids in enumerate(encoded):
            targets[b, : len(ids)] = torch.tensor(ids)
        inputs = torch.cat([torch.full((len(texts), 1), self.sos_id), targets[:, :-1]], dim=1)  # (B, T)
        return TargetBatch(inputs, targets, torch.tensor([len(e) for e in encoded]))
