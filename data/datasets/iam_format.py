"""IAM's ASCII ground-truth files (``ascii/{forms,lines,sentences,words}.txt``) and its id scheme.

The field order is the one each file's own header documents (writer-htr.md §3.2)::

    forms.txt      a01-000u 000 2 prt 7 5 52 36
                   form, writer, sentences, word segmentation (prt|all), lines, lines segmented
                   correctly, words, words in correctly segmented lines
    lines.txt      a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from
                   line, segmentation (ok|err), grey level, components, box x y w h, text
    sentences.txt  a01-000u-s00-00 0 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from
                   sentence part, sentence number, segmentation, grey level, components, box, text
    words.txt      a01-000u-00-00 ok 154 1 408 768 27 51 AT A
                   word, segmentation (ok|er), grey level of its line, components, box, POS tag, text

Lines starting with ``#`` are comments. Texts separate words with ``|``, and a single IAM word may itself
contain a space (``M Ps``), so a text is everything after the fixed fields. A line with a field missing
is rejected with the file and line number: the numeric fields are parsed as integers and the field count
is checked, so a dropped component count (a bug of some third-party parsers) can never shift the box
into the wrong fields. Transcriptions are kept exactly as IAM writes them (punctuation and
contractions split off: ``he 's``).

Ids nest: form ``a01-000u`` -> line ``a01-000u-00`` -> word ``a01-000u-00-00``; a sentence part is
``a01-000u-s00-00``. Images live at ``<level>/<first id part>/<form id>/<id>.png``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

__all__ = [
    "LEVELS",
    "Box",
    "CorpusError",
    "FormRecord",
    "Level",
    "LineRecord",
    "SentenceRecord",
    "WordRecord",
    "form_of",
    "id_problem",
    "image_path",
    "line_of",
    "parse_forms",
    "parse_lines",
    "parse_sentences",
    "parse_words",
]

Level = Literal["words", "lines", "sentences"]
LEVELS: tuple[Level, ...] = ("words", "lines", "sentences")

# A form id is a text code and a number with an optional letter for a re-write (a01-000u); a line adds
# "-NN", a word "-NN-NN", a sentence part "-sNN-NN". Only the dash-separated structure is enforced,
# so corpora in this layout with other codes (the synthetic ones) read as well.
_ID_PARTS = {"forms": 2, "lines": 3, "words": 4, "sentences": 4}
_PART = re.compile(r"[A-Za-z0-9]+")


class CorpusError(ValueError):
    """A corpus that does not follow the IAM layout; the message names the file (and line) and the problem."""


class Box(NamedTuple):
    """A bounding box in form pixels (IAM's ``x y w h`` order); compares equal to a plain tuple."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class FormRecord:
    """One line of ``forms.txt``."""

    id: str  # a01-000u
    writer: str  # "000": a string, leading zeros kept
    num_sentences: int
    segmentation: str  # "prt" (some lines segmented correctly) or "all"
    num_lines: int
    num_lines_ok: int  # lines whose word segmentation is correct
    num_words: int
    num_words_ok: int  # words in the correctly segmented lines


@dataclass(frozen=True)
class LineRecord:
    """One line of ``lines.txt``."""

    id: str  # a01-000u-00
    segmentation: str  # "ok" or "err" (the line's word segmentation has errors)
    grey: int  # grey level for binarising the line
    components: int  # connected components
    box: Box
    words: tuple[str, ...]  # the |-separated tokens; one token may hold a space ("M Ps")

    @property
    def text(self) -> str:
        """The transcription with ``|`` read as a space."""
        return " ".join(self.words)


@dataclass(frozen=True)
class SentenceRecord:
    """One line of ``sentences.txt``: the part of a sentence that lies on one text line."""

    id: str  # a01-000u-s00-00
    number: int  # sentence number within the form
    segmentation: str  # "ok" or "err" (the header says "er"; the data has "err"; both are read)
    grey: int
    components: int
    box: Box
    words: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class WordRecord:
    """One line of ``words.txt``."""

    id: str  # a01-000u-00-00
    segmentation: str  # "ok" or "er" (segmentation may be bad); not "err" as in lines.txt
    grey: int  # grey level of the line holding the word
    components: int
    box: Box
    tag: str  # Brown-corpus part-of-speech tag
    text: str  # as IAM writes it; "#" marks an unreadable or struck-out word


def form_of(item_id: str) -> str:
    """Form id of a line, word or sentence id: ``a01-000u-00-00`` -> ``a01-000u``."""
    return "-".join(item_id.split("-")[:2])


def line_of(word_id: str) -> str:
    """Line id of a word id: ``a01-000u-00-00`` -> ``a01-000u-00``."""
    return "-".join(word_id.split("-")[:3])


def image_path(root: str | Path, item_id: str, level: Level) -> Path:
    """Where IAM keeps the image of a word, line or sentence part.

    Args:
        root: the IAM folder (holding ``ascii/``, ``words/``, ...).
        item_id: e.g. ``a01-000u-00-00``.
        level: ``"words"``, ``"lines"`` or ``"sentences"``.

    Returns:
        ``root/<level>/<first id part>/<form id>/<id>.png``, e.g. ``words/a01/a01-000u/a01-000u-00-00.png``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return Path(root) / level / item_id.split("-")[0] / form_of(item_id) / f"{item_id}.png"


def id_problem(item_id: str, kind: str) -> str | None:
    """Why ``item_id`` is not an id of ``kind`` ("forms", "lines", "words", "sentences"), or None."""
    parts = item_id.split("-")
    if len(parts) != _ID_PARTS[kind] or not all(_PART.fullmatch(p) for p in parts):
        return f"{item_id!r} is not a {kind[:-1]} id (expected {_ID_PARTS[kind]} dash-separated parts)"
    if kind == "sentences" and not parts[2].startswith("s"):
        return f"{item_id!r} is not a sentence id (third part must be sNN)"
    return None


def _data_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-split fields) of every non-comment, non-blank line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not ASCII/UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc})") from exc
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.startswith("#")]


class _Fields:
    """Typed access to one line's fields; every failure names ``file:line`` and the field."""

    def __init__(self, path: Path, number: int, fields: list[str], kind: str, names: str,
                 min_count: int, exact: bool = False) -> None:
        self.where, self.fields = f"{path}:{number}", fields
        if len(fields) < min_count or (exact and len(fields) != min_count):
            raise CorpusError(f"{self.where}: expected {'' if exact else 'at least '}{min_count} fields "
                              f"({names}), got {len(fields)}: {' '.join(fields)[:100]!r}")
        problem = id_problem(fields[0], kind)
        if problem:
            raise CorpusError(f"{self.where}: {problem}")

    def int(self, index: int, name: str) -> int:
        try:
            return int(self.fields[index])
        except ValueError:
            raise CorpusError(f"{self.where}: {name} (field {index + 1}) must be an integer, got "
                              f"{self.fields[index]!r}; is a field missing?") from None

    def grey(self, index: int) -> int:
        value = self.int(index, "grey level")
        if not 0 <= value <= 255:
            raise CorpusError(f"{self.where}: grey level (field {index + 1}) must be in 0..255, got {value}")
        return value

    def box(self, index: int) -> Box:
        return Box(*(self.int(index + k, f"box {name}") for k, name in enumerate("xywh")))

    def choice(self, index: int, name: str, allowed: tuple[str, ...]) -> str:
        value = self.fields[index]
        if value not in allowed:
            raise CorpusError(f"{self.where}: {name} (field {index + 1}) must be one of "
                              f"{'/'.join(allowed)}, got {value!r}")
        return value

    def words(self, index: int) -> tuple[str, ...]:
        return tuple(" ".join(self.fields[index:]).split("|"))


def _unique(records: list, path: Path, numbers: list[int]) -> dict:
    seen: dict[str, int] = {}
    for record, number in zip(records, numbers, strict=True):
        if record.id in seen:
            raise CorpusError(f"{path}:{number}: id {record.id} already listed on line {seen[record.id]}")
        seen[record.id] = number
    return {record.id: record for record in records}


def parse_forms(path: str | Path) -> dict[str, FormRecord]:
    """Read ``forms.txt``.

    Returns:
        Form id -> record, in file order.

    Raises:
        CorpusError: naming ``file:line`` for a missing or extra field, a non-integer count, an unknown
            segmentation value, a malformed or duplicate id.
    """
    path, records, numbers = Path(path), [], []
    names = "form, writer, sentences, prt/all, lines, lines ok, words, words ok"
    for number, fields in _data_lines(path):
        f = _Fields(path, number, fields, "forms", names, 8, exact=True)
        counts = [f.int(k, name) for k, name in ((2, "sentences"), (4, "lines"), (5, "lines ok"),
                                                 (6, "words"), (7, "words ok"))]
        segmentation = f.choice(3, "word segmentation", ("prt", "all"))
        records.append(FormRecord(fields[0], fields[1], counts[0], segmentation, *counts[1:]))
        numbers.append(number)
    return _unique(records, path, numbers)


def parse_lines(path: str | Path) -> dict[str, LineRecord]:
    """Read ``lines.txt``; ``err`` is the flag of a wrongly segmented line.

    Returns:
        Line id -> record, in file order.

    Raises:
        CorpusError: naming ``file:line`` for a missing field, a non-integer grey level, component count
            or box, a flag other than ok/err, a malformed or duplicate id.
    """
    path, records, numbers = Path(path), [], []
    names = "line, ok/err, grey, components, x, y, w, h, text"
    for number, fields in _data_lines(path):
        f = _Fields(path, number, fields, "lines", names, 9)
        records.append(LineRecord(fields[0], f.choice(1, "segmentation", ("ok", "err")), f.grey(2),
                                  f.int(3, "component count"), f.box(4), f.words(8)))
        numbers.append(number)
    return _unique(records, path, numbers)


def parse_sentences(path: str | Path) -> dict[str, SentenceRecord]:
    """Read ``sentences.txt``.

    Returns:
        Sentence-part id -> record, in file order.

    Raises:
        CorpusError: as :func:`parse_lines`.
    """
    path, records, numbers = Path(path), [], []
    names = "sentence part, number, ok/err, grey, components, x, y, w, h, text"
    for number, fields in _data_lines(path):
        f = _Fields(path, number, fields, "sentences", names, 10)
        # the file's header documents "er" while its data says "err"; accept both as written
        records.append(SentenceRecord(fields[0], f.int(1, "sentence number"),
                                      f.choice(2, "segmentation", ("ok", "err", "er")), f.grey(3),
                                      f.int(4, "component count"), f.box(5), f.words(9)))
        numbers.append(number)
    return _unique(records, path, numbers)


def parse_words(path: str | Path) -> dict[str, WordRecord]:
    """Read ``words.txt``; ``er`` (not ``err``) flags a word whose segmentation may be bad.

    Returns:
        Word id -> record, in file order.

    Raises:
        CorpusError: naming ``file:line`` for a missing field (e.g. the component count), a non-integer
            grey level, count or box, a flag other than ok/er, a malformed or duplicate id.
    """
    path, records, numbers = Path(path), [], []
    names = "word, ok/er, grey, components, x, y, w, h, tag, text"
    for number, fields in _data_lines(path):
        f = _Fields(path, number, fields, "words", names, 10)
        records.append(WordRecord(fields[0], f.choice(1, "segmentation", ("ok", "er")), f.grey(2),
                                  f.int(3, "component count"), f.box(4), fields[8], " ".join(fields[9:])))
        numbers.append(number)
    return _unique(records, path, numbers)
