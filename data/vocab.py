"""Token vocabularies with explicit special ids, and the 113-class CROHME vocabulary (posformer.md §2.3).

The CROHME vocabulary is the one of CoMER/PosFormer's ``dictionary.txt`` (110 tokens) plus three
specials, ``<pad>`` = 0, ``<sos>`` = 1, ``<eos>`` = 2, so the regular tokens get ids 3..112 in list order.
Keeping that order keeps the ids of released checkpoints (the reference hard-codes ``{`` = 110,
``}`` = 112, ``^`` = 82, ``_`` = 83, ``[`` = 42, ``]`` = 81, ``\\frac`` = 53, ``\\sqrt`` = 74, which
this list reproduces), but project code never relies on them: every id is looked up by its token
string (posformer.md §1, §12.1), so a shuffled dictionary changes ids, not behaviour.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["CROHME_TOKENS", "SPECIAL_TOKENS", "Vocabulary", "VocabularyError", "crohme_vocab"]

SPECIAL_TOKENS = ("<pad>", "<sos>", "<eos>")  # ids 0, 1, 2 of every Vocabulary

# The 110 regular CROHME tokens, in dictionary.txt order (byte-wise sorted, which is how the file is
# ordered). Groups per posformer.md §2.3; the spec names every group but the Latin letters ("a subset
# of upper- and lower-case"), which are fixed by the reference ids: the 18 upper-case letters fill ids
# 24..41 between ">" (23) and "[" (42), and a..z fill 84..109 between "_" (83) and "{" (110). The list
# was checked token by token against CoMER's dictionary.txt (the spec says the files are identical).
CROHME_TOKENS: tuple[str, ...] = (
    # punctuation and relations before the digits in byte order (§2.3 "! ( ) + , - . /")
    "!", "(", ")", "+", ",", "-", ".", "/",
    # digits (§2.3)
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
    # relations (§2.3 "< = >")
    "<", "=", ">",
    # upper-case Latin subset: the CROHME symbol classes (ids 24..41, see above)
    "A", "B", "C", "E", "F", "G", "H", "I", "L", "M", "N", "P", "R", "S", "T", "V", "X", "Y",
    "[",
    # commands in byte order: Greek (§2.3 Greek), operators and functions (§2.3), structure (\frac \sqrt)
    "\\Delta", "\\Pi", "\\alpha", "\\beta", "\\cdot", "\\cdots", "\\cos", "\\div", "\\exists", "\\forall",
    "\\frac", "\\gamma", "\\geq", "\\in", "\\infty", "\\int", "\\lambda", "\\ldots", "\\leq", "\\lim",
    "\\limits", "\\log", "\\mu", "\\neq", "\\phi", "\\pi", "\\pm", "\\prime", "\\rightarrow", "\\sigma",
    "\\sin", "\\sqrt", "\\sum", "\\tan", "\\theta", "\\times", "\\{", "\\}",
    # closing bracket and scripts (§2.3 "] ^ _")
    "]", "^", "_",
    # lower-case Latin: all 26 (ids 84..109)
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m",
    "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z",
    # group braces and the bar (§2.3 "{ } |")
    "{", "|", "}",
)


class VocabularyError(KeyError):
    """A token the vocabulary lacks; a KeyError whose message prints as written (no added quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Vocabulary:
    """Tokens <-> ids, with ``<pad>`` = 0, ``<sos>`` = 1, ``<eos>`` = 2 and regular tokens from id 3.

    Args:
        tokens: the regular tokens in id order (no specials, no duplicates, no whitespace inside).

    Raises:
        ValueError: an empty list, a duplicate, a special token among the regular ones, or a token
            that is empty or contains whitespace (it could not survive a space-separated caption).

    Examples:
        >>> vocab = Vocabulary(["x", "^", "{", "2", "}"])
        >>> vocab.encode(["x", "^", "{", "2", "}"])
        [3, 4, 5, 6, 7]
        >>> len(vocab), vocab.token_to_id("^")
        (8, 4)
    """

    pad_id = 0
    sos_id = 1
    eos_id = 2

    def __init__(self, tokens: Iterable[str]) -> None:
        tokens = tuple(tokens)
        if not tokens:
            raise ValueError("a vocabulary needs at least one regular token")
        index: dict[str, int] = {}
        for position, token in enumerate(tokens):
            if not token or token != "".join(token.split()):
                raise ValueError(f"token {position} ({token!r}) is empty or contains whitespace")
            if token in SPECIAL_TOKENS:
                raise ValueError(f"token {token!r} is a special token; specials are added automatically")
            if token in index:
                first = index[token] - len(SPECIAL_TOKENS)
                raise ValueError(f"token {token!r} appears twice (positions {first} and {position})")
            index[token] = position + len(SPECIAL_TOKENS)
        self._tokens = SPECIAL_TOKENS + tokens
        self._index = {**{t: i for i, t in enumerate(SPECIAL_TOKENS)}, **index}

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        """Read a ``dictionary.txt``-style file: one token per line, blank lines ignored.

        Args:
            path: the file (UTF-8).

        Returns:
            A vocabulary whose regular ids follow the file order from 3 (§13 V1).

        Raises:
            ValueError: naming the file, for an unreadable file or an invalid token list.
        """
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the vocabulary ({exc})") from exc
        try:
            return cls(line.strip() for line in lines if line.strip())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def __len__(self) -> int:
        """Number of classes, specials included (the size of the model's output layer)."""
        return len(self._tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def __hash__(self) -> int:
        return hash(self._tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} classes: {' '.join(self._tokens[3:8])} ...)"

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every token in id order, specials first."""
        return self._tokens

    @property
    def special_ids(self) -> frozenset[int]:
        """The ids of ``<pad>``, ``<sos>`` and ``<eos>``."""
        return frozenset((self.pad_id, self.sos_id, self.eos_id))

    def token_to_id(self, token: str) -> int:
        """The id of one token.

        Raises:
            VocabularyError: (a KeyError) the token is not in the vocabulary; the message names it.
        """
        try:
            return self._index[token]
        except KeyError:
            raise VocabularyError(f"token {token} is not in the vocabulary") from None

    def id_to_token(self, token_id: int) -> str:
        """The token of one id.

        Raises:
            ValueError: the id is outside ``[0, len(self))``.
        """
        if not 0 <= int(token_id) < len(self._tokens):
            raise ValueError(f"token id {token_id} is outside the vocabulary [0, {len(self._tokens)})")
        return self._tokens[int(token_id)]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The distinct tokens of ``tokens`` that the vocabulary lacks, in order of first appearance."""
        return list(dict.fromkeys(t for t in tokens if t not in self._index))

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of a token sequence, without ``<sos>``/``<eos>``.

        Args:
            tokens: `(L,)` token strings.

        Returns:
            `(L,)` ids.

        Raises:
            VocabularyError: (a KeyError) listing every token that is not in the vocabulary.
        """
        missing = self.unknown(tokens)
        if missing:
            raise VocabularyError(f"tokens not in the vocabulary: {' '.join(missing)}")
        return [self._index[t] for t in tokens]

    def decode(self, ids: Sequence[int], *, keep_specials: bool = False) -> list[str]:
        """Tokens of an id sequence.

        Args:
            ids: `(L,)` ids (a list, or a 1-D tensor).
            keep_specials: keep ``<pad>``/``<sos>``/``<eos>``; by default they are skipped.

        Returns:
            The tokens, specials removed unless ``keep_specials``.

        Raises:
            ValueError: an id outside the vocabulary.
        """
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        tokens = [self.id_to_token(i) for i in ids]
        if keep_specials:
            return tokens
        return [t for t, i in zip(tokens, ids, strict=True) if int(i) not in self.special_ids]


@functools.cache
def crohme_vocab() -> Vocabulary:
    """The 113-class CROHME vocabulary of CoMER/PosFormer (110 tokens + 3 specials; module docstring)."""
    return Vocabulary(CROHME_TOKENS)
