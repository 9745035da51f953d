"""The contour-hinge writer feature (writer-htr.md §8.2, §16.4–5), in pure numpy.

Bulacu & Schomaker, "Text-independent writer identification and verification using textural and
allographic features", IEEE TPAMI 29(4), 2007 (feature "f3", the contour-hinge PDF). No public Python
implementation exists (the thesis called Schomaker's closed binary), so this one follows the paper's
description:

1. **binarise** a grey word image (dark ink on light paper): ink = pixels at or below Otsu's threshold
   (or a fixed grey level such as IAM's ``words.txt`` value);
2. **trace contours**: every boundary between an ink pixel and the paper is a unit "crack" between two
   pixel corners; cracks are chained into closed loops with the ink on their right (clockwise around
   strokes, anticlockwise around holes), turning left at a diagonal junction so diagonally touching ink
   pixels belong to one contour (8-connected ink). Loops are exact and need no seed-point search;
3. **hinge**: at every contour point p_i take the two legs p_{i−L} − p_i and p_{i+L} − p_i (L =
   ``leg_length`` contour steps), measure their directions φ against the horizontal (counter-clockwise,
   y up) and quantise them into ``bins`` sectors of 2π/bins. The two legs are an unordered pair, counted
   once as (min, max): the upper triangle φ2 ≥ φ1, ``bins·(bins + 1)/2`` cells (465 for 30 bins, the
   thesis's ``code_size``; "30 bins" is inferred, §18). Contours of at most 2L steps (specks) are skipped;
4. **aggregate** over a writer's images by summing the counts, then normalise to a PDF (non-negative,
   sums to 1). :func:`support_hinge` reads only the indices it is given, so a writer's code comes from
   its support images alone (fairness, §8.2); the whole-form variant of the thesis is transductive.

The leg length is unverified (the design suggests 5–7 px at 300 dpi); the default 7 counts crack steps
on the stored (unscaled) image. Writers with several forms get one code over all their images, never one
per form overwriting another (pitfall §16.4). :class:`HingeNormalizer` z-scores each dimension with the
mean and standard deviation of the training writers' codes — the recommendation of §16.5, not the
thesis's single global scalar mean and std.

Legend: H×W image pixels, n contour points, D = bins·(bins + 1)/2 feature dimensions, N writers.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .images import otsu_threshold

__all__ = [
    "HingeConfig",
    "HingeNormalizer",
    "binarize",
    "hinge_counts",
    "hinge_pdf",
    "support_hinge",
    "trace_contours",
    "writer_hinge",
]

_log = logging.getLogger(__name__)

# crack directions in image coordinates (row down, column right): east, south, west, north
_STEPS = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], dtype=np.int64)
_EAST, _SOUTH, _WEST, _NORTH = range(4)
_MIN_CONTRAST = 16  # grey levels between darkest and lightest pixel below which an image is blank


@dataclass(frozen=True)
class HingeConfig:
    """Settings of the contour-hinge feature (module docstring)."""

    bins: int = 30  # 2n direction sectors over [0, 2π); 30 gives the thesis's 465 dimensions (inferred)
    leg_length: int = 7  # L, contour steps per leg (unverified: "about 5–7 px at 300 dpi", §8.2)
    threshold: int | None = None  # fixed grey level (ink <= threshold); None: Otsu per image

    def __post_init__(self) -> None:
        if self.bins < 1 or self.leg_length < 1:
            raise ValueError(f"HingeConfig: bins and leg_length must be >= 1, got {self}")
        if self.threshold is not None and not 0 <= self.threshold <= 255:
            raise ValueError(f"HingeConfig.threshold must be a grey level in [0, 255], got {self.threshold}")

    @property
    def size(self) -> int:
        """D = bins·(bins + 1)/2, the number of (φ1 <= φ2) cells."""
        return self.bins * (self.bins + 1) // 2


def binarize(pixels: np.ndarray, threshold: int | None = None) -> np.ndarray:
    """Ink mask of a grey image, dark ink on light paper.

    Args:
        pixels: `(H, W)` uint8 grey levels.
        threshold: ink is ``<= threshold``; None uses Otsu's threshold of the image.

    Returns:
        `(H, W)` bool, True on ink; no ink at all for a blank image (Otsu, and fewer than 16 grey
        levels between its darkest and lightest pixel).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"expected a (H, W) grey image, got shape {pixels.shape}")
    pixels = pixels.astype(np.uint8, copy=False)
    if threshold is None and (pixels.size == 0 or int(pixels.max()) - int(pixels.min()) < _MIN_CONTRAST):
        return np.zeros(pixels.shape, dtype=bool)  # blank: Otsu would split the paper's noise
    return pixels <= (otsu_threshold(pixels) if threshold is None else threshold)


def _cracks(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ink/paper boundary crack: start corner `(E, 2)` (row, col on the (H+1)×(W+1) corner grid)
    and direction `(E,)`, oriented so the ink is on the right."""
    pad = np.pad(ink, 1)
    core = pad[1:-1, 1:-1]
    sides = (  # (paper neighbour, corner offset of the crack's start, direction)
        (pad[:-2, 1:-1], (0, 0), _EAST),  # paper above: the top side, walked east
        (pad[1:-1, 2:], (0, 1), _SOUTH),  # paper right: the right side, walked south
        (pad[2:, 1:-1], (1, 1), _WEST),  # paper below: the bottom side, walked west
        (pad[1:-1, :-2], (1, 0), _NORTH),  # paper left: the left side, walked north
    )
    starts, dirs = [], []
    for neighbour, offset, direction in sides:
        rows, cols = np.nonzero(core & ~neighbour)
        starts.append(np.stack([rows + offset[0], cols + offset[1]], axis=1))
        dirs.append(np.full(rows.shape, direction))
    return np.concatenate(starts).astype(np.int64), np.concatenate(dirs).astype(np.int64)


def _successors(starts: np.ndarray, dirs: np.ndarray, width: int) -> np.ndarray:
    """Index `(E,)` of the crack that follows each crack: left turn, else straight on, else right turn."""
    corners = width + 1
    keys = (starts[:, 0] * corners + starts[:, 1]) * 4 + dirs  # (E,) unique per crack
    order = np.argsort(keys)
    sorted_keys = keys[order]
    ends = starts + _STEPS[dirs]  # (E, 2)
    end_ids = ends[:, 0] * corners + ends[:, 1]
    successor = np.full(len(dirs), -1, dtype=np.int64)
    for turn in (-1, 0, 1):  # left, straight, right (east → north is a left turn)
        query = end_ids * 4 + (dirs + turn) % 4
        pos = np.minimum(np.searchsorted(sorted_keys, query), len(keys) - 1)
        found = (sorted_keys[pos] == query) & (successor < 0)
        successor[found] = order[pos[found]]
    if (successor < 0).any():  # every corner has as many cracks in as out
        raise AssertionError("contour tracing left an open crack chain")
    return successor


def trace_contours(ink: np.ndarray) -> list[np.ndarray]:
    """The closed contours of an ink mask (module docstring, step 2).

    Args:
        ink: `(H, W)` bool, True on ink.

    Returns:
        One `(n, 2)` int64 array per contour: the pixel-corner coordinates (row, col) in walking order
        (ink on the right, 4-connected unit steps); the last point connects back to the first.
    """
    ink = np.asarray(ink, dtype=bool)
    if ink.ndim != 2:
        raise ValueError(f"expected a (H, W) mask, got shape {ink.shape}")
    if not ink.any():
        return []
    starts, dirs = _cracks(ink)
    successor = _successors(starts, dirs, ink.shape[1]).tolist()
    seen = bytearray(len(successor))
    contours = []
    for first in range(len(successor)):
        if seen[first]:
            continue
        loop, crack = [], first
        while not seen[crack]:
            seen[crack] = 1
            loop.append(crack)
            crack = successor[crack]
        contours.append(starts[loop])  # (n, 2)
    return contours


def _pair_index(lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Row-major index of cell (lo, hi), lo <= hi, in the upper triangle of a bins × bins table."""
    return lo * bins - lo * (lo - 1) // 2 + (hi - lo)


def _contour_hinges(points: np.ndarray, config: HingeConfig) -> np.ndarray:
    """Cell indices `(n,)` of the hinges at every point of one closed contour `(n, 2)`."""
    legs = config.leg_length
    back = np.roll(points, legs, axis=0) - points  # (n, 2) p_{i-L} - p_i
    ahead = np.roll(points, -legs, axis=0) - points  # (n, 2) p_{i+L} - p_i
    sector = 2 * math.pi / config.bins

    def direction_bin(leg: np.ndarray) -> np.ndarray:
        angle = np.mod(np.arctan2(-leg[:, 0], leg[:, 1]), 2 * math.pi)  # y up, counter-clockwise
        return np.minimum((angle / sector).astype(np.int64), config.bins - 1)

    first, second = direction_bin(back), direction_bin(ahead)
    return _pair_index(np.minimum(first, second), np.maximum(first, second), config.bins)


def hinge_counts(pixels: np.ndarray, config: HingeConfig = HingeConfig()) -> np.ndarray:
    """Hinge histogram (unnormalised) of one image.

    Args:
        pixels: `(H, W)` uint8 grey image, dark ink on light paper (as stored, before model scaling).
        config: bins, leg length, threshold.

    Returns:
        `(D,)` float64 counts; all zero for an image without a contour longer than 2L.
    """
    counts = np.zeros(config.size, dtype=np.float64)
    for points in trace_contours(binarize(pixels, config.threshold)):
        if len(points) > 2 * config.leg_length:  # shorter loops (specks) cannot hold two distinct legs
            counts += np.bincount(_contour_hinges(points, config), minlength=config.size)
    return counts


def hinge_pdf(counts: np.ndarray) -> np.ndarray:
    """Counts `(D,)` → PDF `(D,)` (non-negative, sums to 1); all-zero counts give the uniform PDF."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("hinge counts must be a non-negative (D,) vector")
    total = counts.sum()
    if total <= 0:
        _log.warning("hinge: no contour in any image; using the uniform PDF")
        return np.full_like(counts, 1.0 / counts.size)
    return counts / total


def writer_hinge(images: Iterable[np.ndarray], config: HingeConfig = HingeConfig()) -> np.ndarray:
    """One writer's Hinge PDF `(D,)` from the given images only (counts summed, then normalised).

    Args:
        images: `(H_i, W_i)` uint8 grey images of one writer, e.g. its support words.
        config: feature settings.
    """
    total = np.zeros(config.size, dtype=np.float64)
    for pixels in images:
        total += hinge_counts(pixels, config)
    return hinge_pdf(total)


def support_hinge(load: Callable[[int], np.ndarray], indices: Sequence[int],
                  config: HingeConfig = HingeConfig(),
                  cache: MutableMapping[int, np.ndarray] | None = None) -> np.ndarray:
    """A writer's Hinge PDF `(D,)` over the images at ``indices`` (its support set); nothing else is read.

    Args:
        load: dataset index → `(H, W)` uint8 grey image; called only for ``indices`` not in ``cache``.
        indices: the support set's dataset indices.
        config: feature settings (the cache must hold counts made with the same settings).
        cache: per-image counts by index, filled as images are read (evaluation re-uses words across
            the 10 permutations of a writer).

    Raises:
        ValueError: no index given.
    """
    if not indices:
        raise ValueError("support_hinge needs at least one image")
    total = np.zeros(config.size, dtype=np.float64)
    for index in indices:
        counts = cache.get(index) if cache is not None else None
        if counts is None:
            counts = hinge_counts(load(index), config)
            if cache is not None:
                cache[index] = counts
        total += counts
    return hinge_pdf(total)


class HingeNormalizer:
    """Per-dimension z-scores fitted on the training writers' codes (§16.5 recommendation).

    Args:
        mean: `(D,)` mean of each dimension.
        std: `(D,)` standard deviation of each dimension, floored at ``min_std`` by :meth:`fit` so
            dimensions that (almost) never occur in training do not blow up at test time.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if mean.ndim != 1 or mean.shape != std.shape or not (std > 0).all():
            raise ValueError("HingeNormalizer needs (D,) mean and (D,) positive std")
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, codes: np.ndarray, min_std: float = 1e-4) -> HingeNormalizer:
        """Fit on training writers' PDFs `(N, D)` (one row per writer)."""
        codes = np.asarray(codes, dtype=np.float64)
        if codes.ndim != 2 or len(codes) < 1:
            raise ValueError(f"fit needs (N, D) codes with N >= 1, got shape {codes.shape}")
        return cls(codes.mean(axis=0), np.maximum(codes.std(axis=0), min_std))

    @property
    def size(self) -> int:
        return int(self.mean.size)

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        """`(..., D)` PDFs → `(..., D)` z-scores (float64)."""
        return (np.asarray(codes, dtype=np.float64) - self.mean) / self.std

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"mean": [...], "std": [...]}``."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HingeNormalizer:
        return cls(np.asarray(data["mean"]), np.asarray(data["std"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> HingeNormalizer:
        return cls.from_dict(json.loads(text))

