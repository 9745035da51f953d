"""Splitting a handwritten text line into word images, so that a word model can read lines.

IAM lines (and the synthetic ones) leave a gap between words that is wider than the gaps between the
letters of a word. Slanted writing hides it from a plain column profile (an ascender leans over the
gap), so the gaps are looked for in the line sheared upright:

1. ink = the darker Otsu class;
2. the slant s is the shear x' = x + s·(y − y_c) that makes the column profile of the ink peakiest
   (largest Σ profile², the usual deslant criterion: vertical strokes pile up in few columns);
3. the x-height is the height of the band of rows holding at least half the peak row ink;
4. the gaps (runs of empty sheared columns) fall in two groups, between letters and between words:
   the word gaps are those at least as wide as the gap that most exceeds the next narrower one
   (the largest ratio, looked for among gaps of ``MIN_GAP`` to ``MAX_GAP`` x-heights); where no
   gap stands out that way (ratio under ``MIN_RATIO``), gaps of at least ``gap`` x-heights;
5. a small mark ending a word (a full stop, a comma, a closing quote: a run of ink at most half an
   x-height tall after the word's last letter gap) is cut off as a word of its own, as IAM tokenises
   punctuation;
6. each word is the part of the line between two cuts (sheared back, so the cut follows the slant),
   the other pixels painted with the paper's grey level, cropped to its ink: what the word model was
   trained on (IAM word images are tight ink boxes).

Legend: (H, W) the line's pixels, dark ink on light paper, uint8.
"""

from __future__ import annotations

import itertools

import numpy as np

from .images import otsu_threshold

__all__ = ["WORD_GAP", "split_words", "word_gap"]

WORD_GAP = 0.7  # word gap in x-heights where the gaps are not clearly two groups
MIN_GAP, MAX_GAP = 0.45, 1.2  # a gap narrower is never, one wider always a word gap (x-heights)
MIN_RATIO = 1.3
_SHEARS = np.linspace(-0.8, 0.8, 33)


def _slant(ys: np.ndarray, xs: np.ndarray, width: int) -> float:
    """The shear that makes the sheared ink's column profile peakiest."""
    best, best_score = 0.0, -1.0
    for s in _SHEARS:
        cols = np.round(xs + s * ys).astype(np.int64)
        cols -= cols.min()
        score = float(np.square(np.bincount(cols, minlength=width).astype(np.float64)).sum())
        if score > best_score:
            best, best_score = float(s), score
    return best


def _x_height(ink: np.ndarray) -> float:
    rows = ink.sum(axis=1)
    return float(max(1, np.count_nonzero(rows >= 0.5 * rows.max())))


def word_gap(gaps: np.ndarray, fallback: float = WORD_GAP) -> float:
    """The narrowest word gap of a line, from all its gaps (in x-heights; step 4 of the module)."""
    widths = np.sort(gaps[gaps > 0])[::-1]
    best, best_ratio = fallback, MIN_RATIO
    for k, width in enumerate(widths):
        if width > MAX_GAP:
            continue
        if width < MIN_GAP:
            break
        if k + 1 == len(widths):
            break  # no narrower gap to compare with: no evidence of two groups
        ratio = width / max(widths[k + 1], 1e-3)
        if ratio > best_ratio:
            best, best_ratio = float(width), ratio
    return min(best, MAX_GAP)


def _mark_cuts(filled: np.ndarray, jumps: np.ndarray, word_ends: set[int], sheared: np.ndarray,
               ys: np.ndarray, xh: float) -> list[int]:
    """Gaps (indices into ``jumps``) before a small mark that ends a word: a full stop, comma or closing
    quote, which IAM (and a model trained on its words) reads as a word of its own."""
    cuts = []
    starts = np.concatenate([[0], np.flatnonzero(jumps > 1) + 1])  # first filled column of each run
    for k in range(1, len(starts)):
        first, last = starts[k], (starts[k + 1] - 1 if k + 1 < len(starts) else len(filled) - 1)
        gap_before = first - 1  # index into jumps of the gap before this run
        ends_word = last == len(filled) - 1 or last in word_ends
        if not ends_word or gap_before in word_ends:
            continue  # not a word's last run, or a word of its own already
        inside = (sheared >= filled[first]) & (sheared <= filled[last])
        height = ys[inside].max() - ys[inside].min() + 1
        if height <= 0.5 * xh and filled[last] - filled[first] + 1 <= 0.6 * xh:
            cuts.append(int(gap_before))
    return cuts


def split_words(grey: np.ndarray, *, gap: float | None = None, marks: bool = True) -> list[np.ndarray]:
    """Word images of a handwritten line, left to right.

    Args:
        grey: `(H, W)` uint8, dark ink on light paper.
        gap: a fixed word gap in x-heights; None: chosen per line from its gaps (:func:`word_gap`).
        marks: a small mark ending a word (full stop, comma, closing quote) becomes a word of its own,
            as IAM tokenises it (step 5 of the module).

    Returns:
        `(h, w)` uint8 crops, each one word's ink box with the neighbours' ink painted out; the whole
        line when it has no ink (a blank image is the caller's error to report) or no word gap.
    """
    grey = np.asarray(grey, dtype=np.uint8)
    if grey.ndim != 2:
        return [grey]
    ink = grey <= otsu_threshold(grey)  # the darker Otsu class, as data.handwriting's blank check
    ys, xs = np.nonzero(ink)
    if ys.size == 0 or ink.all():
        return [grey]
    yc = float(np.median(ys))
    slant = _slant(ys - yc, xs, grey.shape[1])
    sheared = np.round(xs + slant * (ys - yc)).astype(np.int64)
    filled = np.flatnonzero(np.bincount(sheared - sheared.min())) + sheared.min()
    jumps = np.diff(filled)  # a jump of k columns is a run of k - 1 empty columns
    xh = _x_height(ink)
    widths = (jumps - 1) / xh  # in x-heights
    ends = set(np.flatnonzero(widths >= (word_gap(widths) if gap is None else gap)).tolist())
    if marks:
        ends |= set(_mark_cuts(filled, jumps, ends, sheared, ys, xh))
    cuts = [int(filled[i] + jumps[i] // 2) for i in sorted(ends)]
    return _crops(grey, ink, [-np.inf, *cuts, np.inf], slant, yc, (ys, xs, sheared))


def _crops(grey: np.ndarray, ink: np.ndarray, edges: list[float], slant: float, yc: float,
           pixels: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """The part of the line between each pair of sheared cuts, cropped to its ink (step 6)."""
    ys, xs, sheared = pixels
    paper = np.uint8(np.median(grey[~ink]))  # split_words returns early when everything is ink
    rows, cols = np.indices(grey.shape)
    shear_all = cols + slant * (rows - yc)
    words = []
    for left, right in itertools.pairwise(edges):
        inside = (sheared >= left) & (sheared < right)
        if not inside.any():
            continue
        y0, y1 = ys[inside].min(), ys[inside].max() + 1
        x0, x1 = xs[inside].min(), xs[inside].max() + 1
        crop = grey[y0:y1, x0:x1].copy()
        region = shear_all[y0:y1, x0:x1]
        crop[(region < left) | (region >= right)] = paper
        words.append(crop)
    return words
