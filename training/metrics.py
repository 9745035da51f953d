"""Recognition metrics as pure functions: WER, CER, ExpRate and the ≤1/≤2/≤3 token-error rates.

No Lightning here: the ``evaluate`` command imports this module (architecture.md, dependency table).

* WER and CER are corpus-level (samba-asr.md §8.7): edits summed over the corpus divided by reference
  units summed over the corpus, not a mean of per-utterance rates. Units are whitespace-separated words,
  or characters of the whitespace-collapsed, stripped text (spaces count as characters). jiwer agrees
  on single-spaced text; its CER strips the ends but keeps inner runs of spaces.
* Empty references: an empty reference contributes no units, and every hypothesis unit against it is an
  insertion. If the whole corpus has no reference units, the rate is 0.0 without errors and ``inf`` with.
* ExpRate and ≤k follow the PosFormer reference ``test.py`` (posformer.md §7): the share of expressions
  whose token-level Levenshtein distance to the reference is 0, ≤ 1, ≤ 2 and ≤ 3.

The edit distance is the textbook Levenshtein dynamic programme (unit costs), with each row vectorised in
numpy: the insertion recurrence ``d[j] = min(x[j], d[j-1] + 1)`` is a running minimum of ``x[j] - j``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "ErrorRate",
    "ExpressionRate",
    "cer",
    "corpus_error_rate",
    "edit_ops",
    "error_counts",
    "expression_rate",
    "normalize_transcript",
    "wer",
]

Unit = Literal["word", "char"]


def _distance_matrix(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> np.ndarray:
    """`(len(ref) + 1, len(hyp) + 1)` Levenshtein costs of every pair of prefixes."""
    symbols: dict[Hashable, int] = {}
    ref_ids = np.array([symbols.setdefault(x, len(symbols)) for x in ref], dtype=np.int64)
    hyp_ids = np.array([symbols.setdefault(x, len(symbols)) for x in hyp], dtype=np.int64)
    columns = np.arange(len(hyp) + 1, dtype=np.int64)
    costs = np.empty((len(ref) + 1, len(hyp) + 1), dtype=np.int64)
    costs[0] = columns
    for i, symbol in enumerate(ref_ids, start=1):
        best = np.empty_like(columns)
        best[0] = i
        # substitution or match from the diagonal, deletion from above
        best[1:] = np.minimum(costs[i - 1, :-1] + (hyp_ids != symbol), costs[i - 1, 1:] + 1)
        costs[i] = np.minimum.accumulate(best - columns) + columns  # then insertions from the left
    return costs


def edit_ops(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> tuple[int, int, int]:
    """Substitutions, deletions and insertions of a minimum-cost alignment of ``hyp`` to ``ref``.

    Their sum is the Levenshtein distance. Among equally cheap alignments, the backtrace prefers a match or
    substitution, then a deletion, then an insertion.

    Args:
        ref: reference units (words, characters or tokens).
        hyp: hypothesis units.

    Returns:
        ``(S, D, I)``.
    """
    if len(ref) == len(hyp) and all(r == h for r, h in zip(ref, hyp, strict=True)):
        return 0, 0, 0  # the common case in a good corpus, without the O(n·m) table
    costs = _distance_matrix(ref, hyp).tolist()  # Python lists: scalar reads are much faster than numpy's
    i, j, subs, dels, ins = len(ref), len(hyp), 0, 0, 0
    while i or j:
        if i and j and costs[i][j] == costs[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            subs += int(ref[i - 1] != hyp[j - 1])
            i, j = i - 1, j - 1
        elif i and costs[i][j] == costs[i - 1][j] + 1:
            dels, i = dels + 1, i - 1
        else:
            ins, j = ins + 1, j - 1
    return subs, dels, ins


@dataclass(frozen=True)
class ErrorRate:
    """Error counts over a corpus; ``+`` merges two corpora (e.g. validation batches)."""

    subs: int = 0  # substituted reference units
    dels: int = 0  # deleted reference units
    ins: int = 0  # inserted hypothesis units
    ref_units: int = 0  # reference words or characters

    @property
    def errors(self) -> int:
        """S + D + I."""
        return self.subs + self.dels + self.ins

    @property
    def rate(self) -> float:
        """errors / ref_units; with no reference units 0.0 without errors, else ``inf``."""
        if self.ref_units == 0:
            return 0.0 if self.errors == 0 else math.inf
        return self.errors / self.ref_units

    def __add__(self, other: ErrorRate) -> ErrorRate:
        return ErrorRate(self.subs + other.subs, self.dels + other.dels, self.ins + other.ins,
                         self.ref_units + other.ref_units)


def _units(text: str, unit: Unit) -> list[str]:
    if unit == "word":
        return text.split()
    if unit == "char":
        return list(" ".join(text.split()))
    raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")


def error_counts(ref: str, hyp: str, unit: Unit = "word") -> ErrorRate:
    """Error counts of one reference/hypothesis pair (see :func:`corpus_error_rate`)."""
    ref_units = _units(ref, unit)
    subs, dels, ins = edit_ops(ref_units, _units(hyp, unit))
    return ErrorRate(subs, dels, ins, len(ref_units))


def _as_list(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def corpus_error_rate(refs: str | Sequence[str], hyps: str | Sequence[str], unit: Unit = "word") -> ErrorRate:
    """Corpus-level error rate: Σ edits / Σ reference units (not a mean of per-utterance rates).

    Texts are compared as given: normalise both sides first (e.g. :func:`normalize_transcript`).

    Args:
        refs: reference transcripts (a single string counts as a corpus of one).
        hyps: hypotheses, in the same order.
        unit: ``"word"`` (whitespace-separated) or ``"char"`` (characters of the whitespace-collapsed,
            stripped text, spaces included).

    Returns:
        The summed counts; ``.rate`` is the WER or CER as a fraction.
    """
    refs, hyps = _as_list(refs), _as_list(hyps)
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses")
    total = ErrorRate()
    for ref, hyp in zip(refs, hyps, strict=True):
        total = total + error_counts(ref, hyp, unit)
    return total


def wer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> ErrorRate:
    """Corpus word error counts; ``.rate`` is the WER as a fraction (see :func:`corpus_error_rate`)."""
    return corpus_error_rate(refs, hyps, "word")


def cer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> ErrorRate:
    """Corpus character error counts; ``.rate`` is the CER as a fraction (see :func:`corpus_error_rate`)."""
    return corpus_error_rate(refs, hyps, "char")


_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_PUNCTUATION = re.compile(r"[^\w\s']|_")
_LONE_APOSTROPHE = re.compile(r"(?<![^\W_])'|'(?![^\W_])")


def normalize_transcript(text: str) -> str:
    """LibriSpeech scoring normalisation, applied to hypotheses (references already follow it).

    Exactly, in order:

    1. typographic apostrophes (U+2019, U+2018, U+02BC) become ``'``;
    2. upper case (``str.upper``);
    3. every character that is not a letter, digit, apostrophe or whitespace becomes a space
       (so ``WELL-KNOWN`` gives ``WELL KNOWN``);
    4. an apostrophe stays only between two letters or digits (``DON'T``, ``O'ER``); others are deleted
       (``'TIS`` gives ``TIS``, ``BOYS'`` gives ``BOYS``);
    5. whitespace runs become one space, and the ends are stripped.

    Args:
        text: any transcript.

    Returns:
        The normalised transcript.
    """
    text = _PUNCTUATION.sub(" ", text.translate(_QUOTES).upper())
    return " ".join(_LONE_APOSTROPHE.sub("", text).split())


@dataclass(frozen=True)
class ExpressionRate:
    """Expression-level recognition rates, as fractions of ``count`` expressions."""

    count: int  # expressions scored
    exprate: float  # exact matches (token distance 0)
    le1: float  # token distance <= 1
    le2: float  # token distance <= 2
    le3: float  # token distance <= 3


def expression_rate(refs: Sequence[str | Sequence[str]],
                    hyps: Sequence[str | Sequence[str]]) -> ExpressionRate:
    """ExpRate and the ≤1/≤2/≤3 rates over token sequences (PosFormer's protocol, posformer.md §7).

    Args:
        refs: reference expressions: token sequences, or strings of space-separated tokens.
        hyps: hypotheses, in the same order and form.

    Returns:
        The four rates.

    Raises:
        ValueError: different lengths, or no expressions.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("expression_rate needs at least one expression")
    tokens = lambda x: x.split() if isinstance(x, str) else list(x)  # noqa: E731
    distances = np.array([sum(edit_ops(tokens(r), tokens(h))) for r, h in zip(refs, hyps, strict=True)])
    return ExpressionRate(len(refs), *(float(np.mean(distances <= k)) for k in range(4)))
