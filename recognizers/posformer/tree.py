"""Position-forest labels of a LaTeX token sequence (posformer.md §4) and the teacher-forcing targets built
from them (§5).

Every substructure is a small tree: the main body is M, the upper part is L (superscript, numerator,
radical index, upper limit) and the lower part is R (subscript, denominator, radicand, lower limit). A
token's *path* lists its relations outermost first and ends in M; its identifier is "M" plus the path
without that final M (``ML``, ``MLLR``), its nesting level is the number of those letters, and its relative
position is the innermost letter (M at top level). Structural tokens ``^ _ { } [ ] \\frac \\sqrt`` take the
enclosing level with relation M. Labels are computed on the natural (left-to-right) order and merely
reversed for the r2l copy, so a token's label never depends on the direction.

Tokens are plain strings (the CROHME tokenisation with braced scripts, §2.3), so nothing here depends on
a vocabulary object: structural tokens are recognised by their text, never by id (§1).

Policies (deliberate, documented choices of §4.2):

* **nesting ≥ 5** (``overflow``): ``"truncate"`` (default, the reference) keeps the outermost 5 relations,
  giving level 4 and relative position ``path[3]``; ``"innermost"`` gives level 4 and the innermost relation;
* **malformed ground truth** (``on_error``): unbraced scripts, ``\\frac``/``\\sqrt`` without braced
  arguments and unbalanced braces raise :class:`MalformedLatexError` (``"raise"``, default) or label every
  token M (``"flat"``); the reference silently mislabels them;
* **stop position** (``stop``): the reference's target there depends on padding and on which row is the
  longest; here it is level 0 and relative position ``<eos>`` (class 2) in both directions (``"eos"``,
  default), or excluded from the position losses (``"ignore"``, targets :data:`IGNORE_INDEX`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "EOS_CLASS",
    "IGNORE_INDEX",
    "L_CLASS",
    "M_CLASS",
    "PAD_CLASS",
    "PATH_DIM",
    "RELATION_CLASS",
    "R_CLASS",
    "SOS_CLASS",
    "MalformedLatexError",
    "PositionLabels",
    "TeacherForcing",
    "bidirectional_targets",
    "label_positions",
]

# Class ids of the relative-position head; the path vectors use the same codes (§4.2).
PAD_CLASS, SOS_CLASS, EOS_CLASS, M_CLASS, L_CLASS, R_CLASS = range(6)
RELATION_CLASS = {"M": M_CLASS, "L": L_CLASS, "R": R_CLASS}
PATH_DIM = 5  # the position decoder's input vector; also the number of level classes (0..4)
IGNORE_INDEX = -100  # target of positions excluded from the position losses (stop="ignore")
_SCRIPTS = {"^": "L", "_": "R"}


class MalformedLatexError(ValueError):
    """The token sequence breaks the braced-argument conventions of the CROHME captions."""


@dataclass(frozen=True)
class PositionLabels:
    """Position-forest labels of one token sequence, token by token (all tuples have its length).

    Attributes:
        tokens: the tokens.
        paths: relations outermost first, ending in ``"M"``: ``("L", "M")`` for a superscript.
        levels: nesting-level class of each token, 0..4.
        relations: relative-position class of each token: ``M_CLASS``, ``L_CLASS`` or ``R_CLASS``.
    """

    tokens: tuple[str, ...]
    paths: tuple[tuple[str, ...], ...]
    levels: tuple[int, ...]
    relations: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def identifiers(self) -> tuple[str, ...]:
        """The paper's identifiers: ``"M"`` followed by the path without its final M (``"ML"``, ``"MRR"``)."""
        return tuple("M" + "".join(p[:-1]) for p in self.paths)

    @property
    def vectors(self) -> tuple[tuple[int, ...], ...]:
        """The position decoder's input vector of each token: its path coded 3/4/5, cut or 0-padded to 5."""
        return tuple(_vector([RELATION_CLASS[r] for r in p]) for p in self.paths)

    def reversed(self) -> PositionLabels:
        """The same per-token labels in reverse token order (the r2l copy)."""
        return PositionLabels(self.tokens[::-1], self.paths[::-1], self.levels[::-1], self.relations[::-1])


def _vector(codes: Sequence[int]) -> tuple[int, ...]:
    return tuple(codes[:PATH_DIM]) + (0,) * (PATH_DIM - min(len(codes), PATH_DIM))


def _check_braces(tokens: Sequence[str]) -> None:
    depth = 0
    for i, t in enumerate(tokens):
        depth += (t == "{") - (t == "}")
        if depth < 0:
            raise MalformedLatexError(f"unbalanced '}}' at token {i}")
    if depth:
        raise MalformedLatexError(f"{depth} unclosed '{{'")


def _match(tokens: Sequence[str], start: int, hi: int, opening: str, owner: str) -> int:
    """Index of the token closing the argument that opens at ``tokens[start]``, before ``hi``.

    A ``{`` argument closes at its matching ``}``. A ``[`` argument (the index of ``\\sqrt``) closes, as
    in LaTeX, at the first ``]`` outside braces, since ``[`` and ``]`` are also ordinary symbols.

    Raises:
        MalformedLatexError: no such argument, or it is not closed.
    """
    if start >= hi or tokens[start] != opening:
        raise MalformedLatexError(f"{owner!r} at token {start - 1} needs a {opening!r} argument")
    braces = 0
    for k in range(start, hi):
        if opening == "[" and k > start and braces == 0 and tokens[k] == "]":
            return k
        braces += (tokens[k] == "{") - (tokens[k] == "}")
        if braces < 0:  # the argument would end outside the group that contains it
            break
        if opening == "{" and braces == 0:
            return k
    raise MalformedLatexError(f"{opening!r} at token {start} is not closed")


def _walk(tokens: Sequence[str], lo: int, hi: int, prefix: tuple[str, ...], paths: list) -> None:
    """Fill ``paths[lo:hi]`` for tokens at nesting ``prefix`` (the pseudocode of §4.2)."""
    here = (*prefix, "M")
    i = lo
    while i < hi:
        t = tokens[i]
        if t in _SCRIPTS:
            j = _match(tokens, i + 1, hi, "{", t)
            paths[i] = paths[i + 1] = paths[j] = here
            _walk(tokens, i + 2, j, (*prefix, _SCRIPTS[t]), paths)
            i = j + 1
        elif t == "\\frac":
            j1 = _match(tokens, i + 1, hi, "{", t)
            j2 = _match(tokens, j1 + 1, hi, "{", t)
            paths[i] = paths[i + 1] = paths[j1] = paths[j1 + 1] = paths[j2] = here
            _walk(tokens, i + 2, j1, (*prefix, "L"), paths)
            _walk(tokens, j1 + 2, j2, (*prefix, "R"), paths)
            i = j2 + 1
        elif t == "\\sqrt" and i + 1 < hi and tokens[i + 1] == "[":
            k = _match(tokens, i + 1, hi, "[", t)
            j = _match(tokens, k + 1, hi, "{", t)
            paths[i] = paths[i + 1] = paths[k] = paths[k + 1] = paths[j] = here
            _walk(tokens, i + 2, k, (*prefix, "L"), paths)  # the index is the upper part
            _walk(tokens, k + 2, j, (*prefix, "R"), paths)  # the radicand counts as lower ("inside")
            i = j + 1
        elif t == "\\sqrt":
            j = _match(tokens, i + 1, hi, "{", t)
            paths[i] = paths[i + 1] = paths[j] = here
            _walk(tokens, i + 2, j, (*prefix, "R"), paths)
            i = j + 1
        else:  # ordinary symbol, including \limits, \sum, \lim, ( ) and stray brace groups
            paths[i] = here
            i += 1


def label_positions(tokens: Sequence[str], *, on_error: str = "raise", overflow: str = "truncate",
                    ) -> PositionLabels:
    """Position-forest labels of a ground-truth token sequence in natural order (§4.2).

    Args:
        tokens: LaTeX tokens, e.g. ``["x", "^", "{", "2", "}"]``.
        on_error: ``"raise"`` or ``"flat"`` (label every token M) for malformed input.
        overflow: ``"truncate"`` (reference) or ``"innermost"``, for nesting deeper than level 4.

    Returns:
        The labels; deterministic and of the same length as ``tokens``.

    Raises:
        MalformedLatexError: malformed input under ``on_error="raise"``.
    """
    if on_error not in ("raise", "flat") or overflow not in ("truncate", "innermost"):
        raise ValueError(f"bad policy: on_error={on_error!r}, overflow={overflow!r}")
    tokens = tuple(tokens)
    paths: list[tuple[str, ...]] = [("M",)] * len(tokens)
    try:
        _check_braces(tokens)
        _walk(tokens, 0, len(tokens), (), paths)
    except MalformedLatexError:
        if on_error == "raise":
            raise
        paths = [("M",)] * len(tokens)
    levels, relations = [], []
    for path in paths:
        cut = path[:PATH_DIM]
        levels.append(len(cut) - 1)
        inner = (cut if overflow == "truncate" else path)[-2] if len(path) > 1 else "M"
        relations.append(RELATION_CLASS[inner])
    return PositionLabels(tokens, tuple(paths), tuple(levels), tuple(relations))


@dataclass(frozen=True)
class TeacherForcing:
    """A bidirectional teacher-forcing batch (§5): the l2r rows of the B samples, then their r2l rows.

    Attributes:
        tgt: `(2B, L)` long decoder inputs: ``[sos, y1..yn, pad..]`` and ``[eos, yn..y1, pad..]``.
        out: `(2B, L)` long next-token targets: ``[y1..yn, eos, pad..]`` and ``[yn..y1, sos, pad..]``.
        pos_vectors: `(2B, L, 5)` float, the path vector of each *input* token (start tokens
            ``[1,0,0,0,0]`` and ``[2,0,0,0,0]``, pad zeros); None without labels.
        level: `(2B, L)` long, the level class of each *output* token; None without labels.
        relpos: `(2B, L)` long, the relative-position class of each *output* token; None without labels.
    """

    tgt: Tensor
    out: Tensor
    pos_vectors: Tensor | None
    level: Tensor | None
    relpos: Tensor | None


def _rows(ids: Sequence[int], labels: PositionLabels | None, specials: tuple[int, int, int], width: int,
          pad_id: int, stop_targets: tuple[int, int]) -> tuple[list | None, ...]:
    """One row of one direction; ``ids`` and ``labels`` are already in that direction's order and
    ``specials`` is (start id, stop id, start-vector class)."""
    start, stop, start_class = specials
    fill = width - len(ids) - 1
    tgt = [start, *ids] + [pad_id] * fill
    out = [*ids, stop] + [pad_id] * fill
    if labels is None:
        return tgt, out, None, None, None
    vectors = [_vector([start_class]), *labels.vectors] + [(0,) * PATH_DIM] * fill
    level = [*labels.levels, stop_targets[0]] + [0] * fill
    relpos = [*labels.relations, stop_targets[1]] + [PAD_CLASS] * fill
    return tgt, out, vectors, level, relpos


def bidirectional_targets(ids: Sequence[Sequence[int]], labels: Sequence[PositionLabels] | None = None, *,
                          pad_id: int = 0, sos_id: int = 1, eos_id: int = 2, stop: str = "eos",
                          directions: Sequence[str] = ("l2r", "r2l")) -> TeacherForcing:
    """Pad B token-id sequences into the teacher-forcing rows of each direction, with position targets.

    Target at step t describes ``out[t] = tgt[t+1]`` (the reference computes labels on ``tgt`` and rotates
    them); the stop position follows the ``stop`` policy of the module docstring.

    Args:
        ids: B sequences of token ids in natural order, without specials.
        labels: their :func:`label_positions` (same lengths), or None for word targets only.
        stop: ``"eos"`` (level 0, relpos ``EOS_CLASS``) or ``"ignore"`` (``IGNORE_INDEX``).
        directions: the row groups to build, in order; ``"l2r"`` and/or ``"r2l"``.

    Returns:
        `(len(directions)·B, max_n + 1)` tensors.
    """
    if stop not in ("eos", "ignore") or not set(directions) <= {"l2r", "r2l"} or not directions:
        raise ValueError(f"bad stop {stop!r} or directions {directions!r}")
    if labels is not None and [len(x) for x in ids] != [len(x) for x in labels]:
        raise ValueError("ids and labels differ in length")
    stop_targets = (0, EOS_CLASS) if stop == "eos" else (IGNORE_INDEX, IGNORE_INDEX)
    width = max((len(x) for x in ids), default=0) + 1
    rows = []
    for direction in directions:
        l2r = direction == "l2r"
        specials = (sos_id, eos_id, SOS_CLASS) if l2r else (eos_id, sos_id, EOS_CLASS)
        for b, seq in enumerate(ids):
            lab = None if labels is None else (labels[b] if l2r else labels[b].reversed())
            rows.append(_rows(list(seq) if l2r else list(seq)[::-1], lab, specials, width, pad_id,
                              stop_targets))
    tgt, out, vectors, level, relpos = zip(*rows, strict=True)
    tensors = [torch.tensor(tgt), torch.tensor(out)]
    if labels is None:
        return TeacherForcing(*tensors, None, None, None)
    return TeacherForcing(*tensors, torch.tensor(vectors, dtype=torch.float32), torch.tensor(level),
                          torch.tensor(relpos))
