"""Split lists of IAM: Aachen/RWTH form-id lists and IAM's own line-id task lists (writer-htr.md §3.3).

A list holds one id per line (``#`` comments and blank lines are skipped). Aachen/RWTH lists
(``train.uttlist``, ``validation.uttlist``, ``test.uttlist``; 747 / 116 / 336 forms) hold **form** ids;
IAM's "Large Writer Independent Text Line Recognition Task" lists (``trainset.txt``,
``validationset1.txt``, ...) hold **line** ids. Reading one kind as the other silently changes every
split (§16.7), so a list is read as the kind it is declared to be and refused, naming the file and line,
when it holds ids of the other kind. Both published splits are writer-disjoint, and so must be any
split read here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .iam_format import CorpusError, id_problem

if TYPE_CHECKING:  # iam.py imports this module; the corpus is only duck-typed here
    from .iam import IAMCorpus

__all__ = ["SplitKind", "Splits", "read_split_list", "read_splits"]

SplitKind = Literal["forms", "lines"]


@dataclass(frozen=True)
class Splits:
    """Split lists read against a corpus: which forms (or lines) and writers each split holds."""

    kind: SplitKind  # "forms" (Aachen/RWTH) or "lines" (IAM task lists such as LWITLRT)
    ids: Mapping[str, frozenset[str]]  # split name -> form ids or line ids
    writers: Mapping[str, frozenset[str]]  # split name -> writer ids


def _list_entries(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot read split list ({exc})") from exc
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 1:
            raise CorpusError(f"{path}:{number}: expected one id per line, got {line.strip()[:80]!r}")
        entries.append((number, fields[0]))
    if not entries:
        raise CorpusError(f"{path}: empty split list")
    return entries


def _entry_problem(entry: str, kind: SplitKind, known: Collection[str]) -> str | None:
    other: SplitKind = "lines" if kind == "forms" else "forms"
    if id_problem(entry, kind) is None:
        return None if entry in known else f"{kind[:-1]} {entry} is not in the corpus"
    if id_problem(entry, other) is None:
        hint = ("this list must hold form ids (an Aachen/RWTH split); IAM's task lists (LWITLRT) hold line "
                "ids: read them with kind='lines'" if kind == "forms" else
                "this list must hold line ids (an IAM task list); Aachen lists hold form ids: read them "
                "with kind='forms'")
        return f"{entry!r} is a {other[:-1]} id, not a {kind[:-1]} id; {hint}"
    return id_problem(entry, kind)


def read_split_list(path: str | Path, corpus: IAMCorpus, kind: SplitKind = "forms") -> frozenset[str]:
    """Read one split list: one form id (``kind="forms"``) or line id (``kind="lines"``) per line.

    Args:
        path: the list, e.g. Aachen's ``train.uttlist`` or LWITLRT's ``trainset.txt``.
        corpus: the corpus every id must belong to.
        kind: what the ids are.

    Returns:
        The ids.

    Raises:
        CorpusError: naming ``file:line``: an id of the other kind (a line-id list read as form ids or
            the reverse), an id unknown to the corpus, a malformed or duplicate entry, an empty list.
    """
    if kind not in ("forms", "lines"):
        raise ValueError(f"kind must be 'forms' or 'lines', got {kind!r}")
    path = Path(path)
    known = corpus.writers if kind == "forms" else corpus.line_ids()
    seen: dict[str, int] = {}
    for number, entry in _list_entries(path):
        problem = _entry_problem(entry, kind, known)
        if problem:
            raise CorpusError(f"{path}:{number}: {problem}")
        if entry in seen:
            raise CorpusError(f"{path}:{number}: {entry} already listed on line {seen[entry]}")
        seen[entry] = number
    return frozenset(seen)


def read_splits(corpus: IAMCorpus, files: Mapping[str, str | Path], kind: SplitKind = "forms") -> Splits:
    """Read named split lists and check that no id and no writer is shared between two splits.

    Args:
        corpus: the corpus.
        files: split name -> list file, e.g. ``{"train": ..., "val": ..., "test": ...}``.
        kind: ``"forms"`` for Aachen-style lists, ``"lines"`` for IAM task lists.

    Returns:
        The ids and writers of each split.

    Raises:
        CorpusError: see :func:`read_split_list`; also an id listed in two splits, or a writer present
            in two splits (named, with both files).
    """
    ids = {name: read_split_list(path, corpus, kind) for name, path in files.items()}
    writers = {name: frozenset(corpus.writer_of(i) for i in members) for name, members in ids.items()}
    splits = Splits(kind, ids, writers)
    names = list(files)
    for k, first in enumerate(names):
        for second in names[k + 1:]:
            _check_disjoint(corpus, splits, (first, second), files)
    return splits


def _check_disjoint(corpus: IAMCorpus, splits: Splits, pair: tuple[str, str],
                    files: Mapping[str, str | Path]) -> None:
    first, second = pair
    ids, writers = splits.ids, splits.writers
    where = f"{files[first]} ({first}) and {files[second]} ({second})"
    shared_ids = sorted(ids[first] & ids[second])
    if shared_ids:
        raise CorpusError(f"{where} both list {shared_ids[0]} ({len(shared_ids)} shared ids)")
    shared = sorted(writers[first] & writers[second])
    if shared:
        writer = shared[0]
        examples = [min(i for i in ids[name] if corpus.writer_of(i) == writer) for name in pair]
        raise CorpusError(f"{where} share writer {writer!r} (e.g. {examples[0]} and {examples[1]}; "
                          f"{len(shared)} shared writers): splits must be writer-disjoint")
