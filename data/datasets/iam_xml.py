"""IAM's per-form XML files (``xml/<form>.xml``): writer id, line segmentation, words and their boxes.

Structure (writer-htr.md §3.2)::

    <form id="a01-000u" writer-id="000" width=.. height=..>
      <machine-printed-part> ... </machine-printed-part>
      <handwritten-part>
        <line id="a01-000u-00" text=".." segmentation="ok|err" threshold="154" asx=.. ...>
          <word id="a01-000u-00-00" text="A" tag="AT"> <cmp x=.. y=.. width=.. height=../> ... </word>

The thesis reads every label and the writer id from here, and drops the words of lines whose
``segmentation`` is ``err``. Texts use XML entities (``&quot;``, ``&amp;``, ``&apos;``), which the
parser unescapes; the line ``text`` keeps the original spacing (``MPs``) where the ASCII files split
tokens (``M Ps``). Files are parsed with ``defusedxml`` (IAM XML declares ISO-8859-1), so entity tricks
in a file fail instead of expanding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from .iam_format import Box, CorpusError, id_problem

__all__ = ["XMLForm", "XMLLine", "XMLWord", "parse_form_xml", "read_xml_dir"]


@dataclass(frozen=True)
class XMLWord:
    """A ``<word>`` element."""

    id: str
    text: str  # entities unescaped
    tag: str  # Brown-corpus POS tag
    components: tuple[Box, ...]  # the <cmp> boxes, in document order; may be empty


@dataclass(frozen=True)
class XMLLine:
    """A ``<line>`` of the handwritten part."""

    id: str
    text: str  # original spacing, entities unescaped
    segmentation: str  # "ok" or "err"
    threshold: int | None  # grey level for binarising (the ``threshold`` attribute), when present
    words: tuple[XMLWord, ...]


@dataclass(frozen=True)
class XMLForm:
    """One ``xml/<form>.xml`` file."""

    id: str
    writer: str  # the ``writer-id`` attribute, leading zeros kept
    lines: tuple[XMLLine, ...]


def _attr(element: Element, name: str, path: Path, what: str) -> str:
    value = element.get(name)
    if value is None:
        raise CorpusError(f"{path}: {what} has no {name!r} attribute")
    return value


def _int(element: Element, name: str, path: Path, what: str) -> int:
    value = _attr(element, name, path, what)
    try:
        return int(value)
    except ValueError:
        raise CorpusError(f"{path}: {what}: {name}={value!r} is not an integer") from None


def _checked_id(element: Element, kind: str, parent: str, path: Path, what: str) -> str:
    item_id = _attr(element, "id", path, what)
    problem = id_problem(item_id, kind)
    if problem or not item_id.startswith(f"{parent}-"):
        raise CorpusError(f"{path}: {what}: {problem or f'id {item_id!r} does not extend {parent!r}'}")
    return item_id


def _word(element: Element, line_id: str, path: Path) -> XMLWord:
    word_id = _checked_id(element, "words", line_id, path, f"a <word> of line {line_id}")
    what = f"word {word_id}"
    boxes = tuple(Box(*(_int(cmp, key, path, f"a <cmp> of {what}") for key in ("x", "y", "width", "height")))
                  for cmp in element.iter("cmp"))
    return XMLWord(word_id, _attr(element, "text", path, what), element.get("tag", ""), boxes)


def _line(element: Element, form_id: str, path: Path) -> XMLLine:
    line_id = _checked_id(element, "lines", form_id, path, "a <line>")
    what = f"line {line_id}"
    segmentation = _attr(element, "segmentation", path, what)
    if segmentation not in ("ok", "err"):
        raise CorpusError(f"{path}: {what}: segmentation must be ok/err, got {segmentation!r}")
    threshold = _int(element, "threshold", path, what) if "threshold" in element.attrib else None
    words = tuple(_word(w, line_id, path) for w in element.iter("word"))
    return XMLLine(line_id, _attr(element, "text", path, what), segmentation, threshold, words)


def parse_form_xml(path: str | Path) -> XMLForm:
    """Read one IAM form XML file.

    Args:
        path: ``xml/<form id>.xml``; the file name must match the form's ``id``.

    Returns:
        The form with its handwritten lines and words in document order.

    Raises:
        CorpusError: naming the file: not well-formed or refused XML (entity declarations), a root that
            is not ``<form>``, a missing attribute, an id that does not nest in its parent, a
            segmentation other than ok/err, a non-integer box.
    """
    path = Path(path)
    try:
        root = fromstring(path.read_bytes())  # bytes, so the declared ISO-8859-1 encoding is honoured
    except (ParseError, DefusedXmlException) as exc:
        raise CorpusError(f"{path}: not usable XML ({exc})") from exc
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc})") from exc
    if root.tag != "form":
        raise CorpusError(f"{path}: root element is <{root.tag}>, expected <form>")
    form_id = _attr(root, "id", path, "<form>")
    if form_id != path.stem:
        raise CorpusError(f"{path}: <form id={form_id!r}> does not match the file name")
    writer = _attr(root, "writer-id", path, "<form>")
    part = root.find("handwritten-part")
    if part is None:
        raise CorpusError(f"{path}: no <handwritten-part>")
    lines = tuple(_line(element, form_id, path) for element in part.iter("line"))
    return XMLForm(form_id, writer, lines)


def read_xml_dir(folder: str | Path) -> dict[str, XMLForm]:
    """Read every ``*.xml`` in ``folder`` (IAM's ``xml/``), sorted by form id.

    Raises:
        CorpusError: see :func:`parse_form_xml`; also when the same line or word id occurs twice.
    """
    forms = {f.id: f for f in (parse_form_xml(p) for p in sorted(Path(folder).glob("*.xml")))}
    seen: dict[str, str] = {}
    for form in forms.values():
        for item_id in (i for line in form.lines for i in (line.id, *(w.id for w in line.words))):
            if item_id in seen:
                raise CorpusError(f"{folder}: id {item_id} occurs in {seen[item_id]}.xml and {form.id}.xml")
            seen[item_id] = form.id
    return forms
