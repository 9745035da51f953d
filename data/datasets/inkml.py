"""CROHME InkML files: traces, symbol trace groups and the LaTeX truth, rasterised for the recognizer.

An InkML file (W3C InkML, as CROHME distributes its online data) holds ``<trace id="..">`` elements
with points ``x y[ t], x y[ t], ...``, nested ``<traceGroup>`` elements whose innermost ones name a
symbol (``<annotation type="truth">``) and list its strokes (``<traceView traceDataRef=".."/>``), and
at the top level the expression's LaTeX in ``<annotation type="truth">$...$</annotation>``.
Only explicit coordinates are read (CROHME uses no difference encoding); XML is parsed with
``defusedxml``, so entity tricks in untrusted files fail instead of expanding.

:func:`rasterize_traces` draws the strokes as white lines on black (the model's convention,
:mod:`data.images`) with Pillow: the ink is scaled to a target height (default 128 px) keeping the
aspect ratio, centred with a margin, y pointing down as in CROHME's screen coordinates. The
stroke width is configurable (3 px by default, about what CROHME's bitmaps show at that height).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import numpy as np
import torch
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ..images import MAX_WIDTH, ImageError, image_to_tensor, scale_to_limit_range
from ..latex import LatexError, tokenize_latex
from ..vocab import Vocabulary, crohme_vocab

__all__ = ["InkExpression", "InkMLDataset", "InkMLError", "TraceGroup", "find_inkml", "rasterize_traces",
           "read_inkml"]

_XML_ID = "{http://www.w3.org/XML/1998/namespace}id"


class InkMLError(ValueError):
    """A malformed or unusable InkML file; the message names the file and the problem."""


@dataclass(frozen=True)
class TraceGroup:
    """One segmented symbol: its label and the ids of its strokes."""

    label: str
    trace_ids: tuple[str, ...]


@dataclass(frozen=True)
class InkExpression:
    """The content of one InkML file."""

    name: str  # the file stem (or the name given for bytes)
    latex: str | None  # the top-level truth without $ delimiters; None when the file has none
    traces: dict[str, np.ndarray] = field(repr=False)  # trace id -> (N, 2) float64 x, y in file order
    groups: tuple[TraceGroup, ...] = ()  # symbol groups, in document order


def _local(tag: object) -> str:
    """Tag name without its namespace (CROHME files use the InkML namespace, some none at all)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _truth(element: Element) -> str | None:
    for child in element:
        if _local(child.tag) == "annotation" and child.get("type") == "truth":
            return (child.text or "").strip()
    return None


def _parse_points(text: str, trace_id: str, name: str) -> np.ndarray:
    points = []
    for number, point in enumerate(p for p in text.replace("\n", ",").split(",") if p.strip()):
        values = point.split()
        try:
            if len(values) < 2:
                raise ValueError("fewer than 2 coordinates")
            x, y = float(values[0]), float(values[1])
        except ValueError as exc:
            raise InkMLError(f"{name}: trace {trace_id!r}, point {number}: cannot read {point.strip()!r} as "
                             f"'x y' ({exc}); only explicit coordinates are supported") from exc
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InkMLError(f"{name}: trace {trace_id!r}, point {number}: non-finite coordinate")
        points.append((x, y))
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)  # (N, 2)


def _groups(root: Element, traces: dict[str, np.ndarray], name: str) -> list[TraceGroup]:
    groups = []
    for group in root.iter():
        if _local(group.tag) != "traceGroup":
            continue
        refs = tuple(v.get("traceDataRef", "") for v in group if _local(v.tag) == "traceView")
        if not refs:
            continue  # an outer grouping ("Segmentation"), not a symbol
        missing = [r for r in refs if r not in traces]
        if missing:
            group_id = group.get(_XML_ID) or group.get("id") or "?"
            raise InkMLError(f"{name}: traceGroup {group_id!r} refers to unknown traces {missing}")
        groups.append(TraceGroup(_truth(group) or "", refs))
    return groups


def read_inkml(source: str | Path | bytes, *, name: str | None = None) -> InkExpression:
    """Read one InkML file.

    Args:
        source: a path, or the file's bytes.
        name: the expression's name for bytes (default ``"<bytes>"``); files use their stem.

    Returns:
        Traces, symbol groups and the LaTeX truth.

    Raises:
        InkMLError: naming the file: unreadable, not well-formed or unsafe XML, not ``<ink>``, no
            traces, a duplicate trace id, an unreadable point, a reference to a missing trace.
    """
    if isinstance(source, bytes):
        label, data = name or "<bytes>", source
    else:
        label = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise InkMLError(f"{label}: cannot read ({exc})") from exc
    try:
        root = fromstring(data)
    except (ParseError, DefusedXmlException) as exc:
        raise InkMLError(f"{label}: not well-formed InkML ({type(exc).__name__}: {exc})") from exc
    if _local(root.tag) != "ink":
        raise InkMLError(f"{label}: the root element is <{_local(root.tag)}>, not <ink>")
    traces: dict[str, np.ndarray] = {}
    for number, trace in enumerate(e for e in root.iter() if _local(e.tag) == "trace"):
        trace_id = trace.get("id") or trace.get(_XML_ID) or str(number)
        if trace_id in traces:
            raise InkMLError(f"{label}: duplicate trace id {trace_id!r}")
        traces[trace_id] = _parse_points(trace.text or "", trace_id, label)
    if not any(len(t) for t in traces.values()):
        raise InkMLError(f"{label}: no trace with points")
    latex = _truth(root)
    if latex is not None:
        latex = latex.strip().strip("$").strip()
    stem = name or (Path(source).stem if not isinstance(source, bytes) else label)
    return InkExpression(stem, latex, traces, tuple(_groups(root, traces, label)))


def rasterize_traces(traces: Iterable[np.ndarray], *, height: int = 128, stroke_width: int = 3,
                     margin: int = 4, max_width: int = MAX_WIDTH) -> Image.Image:
    """Draw strokes as white lines on black, scaled so that the ink fits ``height``.

    Args:
        traces: strokes, each `(N, 2)` x, y (y down); empty ones are skipped.
        height: output height in px.
        stroke_width: line width in px.
        margin: background px kept around the ink (beyond the half stroke width).
        max_width: the output is at most this wide; very wide ink is scaled down to fit.

    Returns:
        A mode ``L`` image `height x W`, strokes 255 on 0.

    Raises:
        ValueError: no points, or a height too small for the margin and stroke width.
    """
    strokes = [np.asarray(t, dtype=np.float64).reshape(-1, 2) for t in traces]
    strokes = [s for s in strokes if len(s)]
    if not strokes:
        raise ValueError("rasterize_traces: no points to draw")
    pad = margin + stroke_width / 2  # from the canvas edge to the nearest stroke centre
    if height - 2 * pad < 1 or max_width - 2 * pad < 1:
        raise ValueError(f"height {height} / max_width {max_width} leave no room inside margin {margin} "
                         f"and stroke width {stroke_width}")
    points = np.concatenate(strokes)  # (P, 2)
    low = points.min(axis=0)
    ink_width, ink_height = points.max(axis=0) - low
    scales = [(height - 2 * pad) / ink_height if ink_height > 0 else math.inf,
              (max_width - 2 * pad) / ink_width if ink_width > 0 else math.inf]
    scale = min(scales) if min(scales) < math.inf else 1.0  # a single dot keeps scale 1
    width = min(max_width, math.ceil(ink_width * scale + 2 * pad))
    # centred vertically; -0.5 because Pillow puts integer coordinates at pixel centres
    offset = np.array([pad, (height - ink_height * scale) / 2]) - 0.5
    image = Image.new("L", (max(width, 1), height), 0)
    draw = ImageDraw.Draw(image)
    radius = stroke_width / 2
    for stroke in strokes:
        xy = [tuple(p) for p in ((stroke - low) * scale + offset).tolist()]
        if len(xy) > 1:
            draw.line(xy, fill=255, width=stroke_width, joint="curve")
        for x, y in (xy[0], xy[-1]):  # round caps (and single-point strokes as dots)
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return image


def find_inkml(root: str | Path) -> list[Path]:
    """Every ``*.inkml`` below ``root`` (a folder) or ``[root]`` for a file, sorted.

    Raises:
        InkMLError: nothing found.
    """
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("*.inkml")) if root.is_dir() else []
    if not files:
        raise InkMLError(f"{root}: no .inkml files")
    return files


class InkMLDataset(Dataset):
    """InkML files as ``(image (1, H, W) float in [0, 1], token ids (L,) int64, name)``.

    The truth LaTeX is normalised to CROHME tokens (:func:`data.latex.tokenize_latex`, strict); the
    image is rasterised (:func:`rasterize_traces`) and kept within the model's size limits.

    Args:
        files: InkML paths, or a folder searched with :func:`find_inkml`.
        vocab: vocabulary of the ids; default :func:`crohme_vocab`.
        height: raster height in px.
        stroke_width: raster line width in px.

    Raises:
        InkMLError: naming the file: unreadable, no truth annotation, or LaTeX that does not tokenise
            into the vocabulary (files are read and checked up front).
    """

    def __init__(self, files: Sequence[str | Path] | str | Path, *, vocab: Vocabulary | None = None,
                 height: int = 128, stroke_width: int = 3) -> None:
        self.files = find_inkml(files) if isinstance(files, str | Path) else [Path(f) for f in files]
        self.vocab = vocab or crohme_vocab()
        self.height, self.stroke_width = height, stroke_width
        self.tokens = [self._tokens(read_inkml(path), path) for path in self.files]

    def _tokens(self, expression: InkExpression, path: Path) -> tuple[str, ...]:
        if expression.latex is None:
            raise InkMLError(f"{path}: no <annotation type=\"truth\"> with the expression's LaTeX")
        try:
            return tokenize_latex(expression.latex, vocab=self.vocab).tokens
        except LatexError as exc:
            raise InkMLError(f"{path}: {exc}") from exc

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        path = self.files[index]
        expression = read_inkml(path)
        image = rasterize_traces(expression.traces.values(), height=self.height,
                                 stroke_width=self.stroke_width)
        try:
            image = scale_to_limit_range(image)
        except ImageError as exc:
            raise InkMLError(f"{path}: {exc}") from exc
        ids = torch.tensor(self.vocab.encode(self.tokens[index]), dtype=torch.long)  # (L,)
        return image_to_tensor(image), ids, expression.name
