"""One synthetic IAM form: a writer's words laid out in lines on a page, cut into IAM's images.

A form's text (whole sentences) is tokenized the IAM way (:mod:`data.synth.iam_layout`) and each
word is drawn in the writer's hand (:mod:`data.synth.handwriting`). Words are placed left to right
with the writer's word spacing (punctuation without a space before it sits close to its word) and
wrap at the right margin; baselines follow the writer's line spacing and drift, plus a small jitter
per word. The page (300 dpi, IAM's 2479 x 3542, the handwriting from about y = 700 as below IAM's
printed part) turns ink into grey: paper level minus ink coverage times the contrast of the word's
ink, plus the writer's sensor noise. Word, line and sentence-part images are crops of that page at
their boxes, as in IAM, so a box and its image always agree; a word box is the union of its
connected components (``<cmp>``), a line box the union of its words.

Planted quirks (chosen by the corpus plan): a struck-out word labelled ``#``; an ``err`` line (its
last word flagged ``er``); an ``er`` word in an ``ok`` line; the one 0-byte word image (IAM has two).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .hands import JITTER, GlyphStyle, WriterStyle
from .handwriting import WordInk, render_word
from .iam_layout import form_xml, pos_tag, tokenize

__all__ = ["PAGE_SIZE", "FormJob", "form_image_path", "render_form"]

PAGE_SIZE = (2479, 3542)  # px: IAM's form scans at 300 dpi
TOP = 700  # px: IAM's handwritten part starts below the printed text
RIGHT_MARGIN = 120  # px
PNG_LEVEL = 1  # zlib level: sensor noise barely compresses, and level 6 took a third of the run time


@dataclass(frozen=True)
class FormJob:
    """Everything that decides one form (the corpus plan makes these)."""

    form_id: str
    writer_id: str
    font: str  # the writer's font file
    style: WriterStyle
    sentences: tuple[str, ...]  # the text, as printed (original spacing)
    struck: int | None  # index (over all tokens of the form) of the word drawn struck out, label "#"
    empty_image: int | None  # index of the word whose image is written as 0 bytes
    err_line: bool  # the second line (the first if there is one) is segmented "err"
    er_word: bool  # the second word of the first line is flagged "er"
    seed: tuple[int, ...]  # the form's own generator
    root: str  # corpus root
    form_image: bool  # also write the page to formsA-D/ etc.
    glyphs: GlyphStyle | None = None  # the writer's glyph variation (training writers, version 3)
    donor: str | None = None  # the font file of ``glyphs.donor``


@dataclass
class _Word:
    text: str  # label: the token, or "#" when struck out
    space_before: bool
    sentence: int
    ink: WordInk
    darkness: float  # paper minus ink grey level for this word
    x: int = 0
    top: int = 0


def form_image_path(root: Path, form_id: str) -> Path:
    """IAM keeps form scans in formsA-D/, formsE-H/ and formsI-Z/ by the form id's first letter."""
    letter = form_id[0].upper()
    folder = "formsA-D" if letter <= "D" else "formsE-H" if letter <= "H" else "formsI-Z"
    return root / folder / f"{form_id}.png"


def _words(job: FormJob, rng: np.random.Generator) -> list[_Word]:
    words: list[_Word] = []
    for number, sentence in enumerate(job.sentences):
        for k, token in enumerate(tokenize(sentence)):
            struck = len(words) == job.struck
            ink = render_word(token.text, job.font, job.style, rng, struck=struck, glyphs=job.glyphs,
                              donor=job.donor)
            darkness = job.style.paper - (job.style.ink + rng.normal(0.0, JITTER["ink"]))
            space = token.space_before if k else bool(words)  # sentences follow each other with a space
            words.append(_Word("#" if struck else token.text, space, number, ink,
                               float(np.clip(darkness, 60.0, 250.0))))
    return words


def _layout(words: list[_Word], style: WriterStyle, rng: np.random.Generator) -> list[list[_Word]]:
    """Place the words (sets ``x`` and ``top``) and wrap them into lines."""
    xh = style.x_height
    right = PAGE_SIZE[0] - RIGHT_MARGIN
    lines: list[list[_Word]] = []
    baseline = TOP + xh * rng.uniform(2.0, 4.0)
    x = start = 0.0
    for word in words:
        width = word.ink.ink.shape[1]
        gap = 0.12 * xh  # punctuation right after its word
        if word.space_before:
            gap = xh * style.word_spacing * float(np.exp(rng.normal(0.0, 0.15)))
        if not lines or (word.space_before and x + gap + width > right):
            if lines:
                baseline += xh * style.line_spacing * float(np.exp(rng.normal(0.0, 0.04)))
            lines.append([])
            x = start = style.margin + xh * rng.normal(0.0, 0.25)
            gap = 0.0
        x += gap
        y = baseline + style.drift * (x - start) + xh * rng.normal(0.0, JITTER["baseline"])
        word.x, word.top = max(0, round(x)), round(y) - word.ink.baseline
        lines[-1].append(word)
        x += width
    return lines


def _compose(words: list[_Word], style: WriterStyle, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The written band of the page as 8-bit grey, and its first row on the page."""
    y0 = min(w.top for w in words) - 20
    y1 = max(w.top + w.ink.ink.shape[0] for w in words) + 20
    width = max(PAGE_SIZE[0], max(w.x + w.ink.ink.shape[1] for w in words))
    dark = np.zeros((y1 - y0, width), dtype=np.float32)
    for w in words:
        h, wd = w.ink.ink.shape
        region = dark[w.top - y0:w.top - y0 + h, w.x:w.x + wd]
        np.maximum(region, w.ink.ink * w.darkness, out=region)
    grey = rng.standard_normal(size=dark.shape, dtype=np.float32)
    grey *= style.noise
    grey += style.paper
    grey -= dark
    np.rint(grey, out=grey)
    return np.clip(grey, 0, 255, out=grey).astype(np.uint8), y0


def _otsu(pixels: np.ndarray) -> int:
    """Otsu's threshold: the grey level that best separates ink from paper."""
    hist = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m / w0 - (m[-1] - m) / w1) ** 2
    return int(np.argmax(np.nan_to_num(between)))


def _union(boxes: list[list[int]]) -> list[int]:
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


def _word_record(word: _Word, word_id: str, sentence_start: bool) -> dict:
    cmps = [[word.x + cx, word.top + cy, cw, ch] for cx, cy, cw, ch in word.ink.components]
    return {"id": word_id, "segmentation": "ok", "tag": pos_tag(word.text, sentence_start),
            "text": word.text, "box": _union(cmps), "cmps": cmps}


def _line_record(job: FormJob, number: int, line: list[_Word], page: np.ndarray, y0: int,
                 starts: set[int]) -> dict:
    line_id = f"{job.form_id}-{number:02d}"
    records = [_word_record(w, f"{line_id}-{k:02d}", id(w) in starts) for k, w in enumerate(line)]
    box = _union([r["box"] for r in records])
    x, y, w, h = box
    text = "".join((" " if w.space_before and k else "") + w.text for k, w in enumerate(line))
    return {"id": line_id, "segmentation": "ok", "grey": _otsu(page[y - y0:y - y0 + h, x:x + w]),
            "components": sum(len(r["cmps"]) for r in records), "box": box, "text": text, "words": records}


def _plant(job: FormJob, lines: list[dict]) -> None:
    """The planted segmentation flags (see the module docstring)."""
    if job.err_line:
        line = lines[min(1, len(lines) - 1)]
        line["segmentation"] = "err"
        line["words"][-1]["segmentation"] = "er"
    if job.er_word and lines[0]["segmentation"] == "ok" and len(lines[0]["words"]) > 1:
        lines[0]["words"][1]["segmentation"] = "er"


def _sentence_parts(job: FormJob, layout: list[list[_Word]], lines: list[dict]) -> list[dict]:
    """The part of each sentence on each line, in reading order (IAM's sentences.txt)."""
    parts: list[dict] = []
    seen: dict[int, int] = {}
    for words, line in zip(layout, lines, strict=True):
        for number in sorted({w.sentence for w in words}):
            records = [r for w, r in zip(words, line["words"], strict=True) if w.sentence == number]
            part = seen[number] = seen.get(number, -1) + 1
            parts.append({"id": f"{job.form_id}-s{number:02d}-{part:02d}", "number": number,
                          "segmentation": line["segmentation"], "grey": line["grey"],
                          "components": sum(len(r["cmps"]) for r in records),
                          "box": _union([r["box"] for r in records]), "words": [r["text"] for r in records]})
    return parts


def _save(page: np.ndarray, y0: int, box: list[int], path: Path) -> None:
    x, y, w, h = box
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(page[y - y0:y - y0 + h, x:x + w]), "L").save(
        path, format="PNG", compress_level=PNG_LEVEL)


def _write_images(job: FormJob, form: dict, page: np.ndarray, y0: int) -> None:
    root, prefix = Path(job.root), job.form_id.split("-")[0]
    index = 0
    for line in form["lines"]:
        _save(page, y0, line["box"], root / "lines" / prefix / job.form_id / f"{line['id']}.png")
        for word in line["words"]:
            path = root / "words" / prefix / job.form_id / f"{word['id']}.png"
            if index == job.empty_image:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")  # IAM's broken word images are empty files
            else:
                _save(page, y0, word["box"], path)
            index += 1
    for part in form["sentences"]:
        _save(page, y0, part["box"], root / "sentences" / prefix / job.form_id / f"{part['id']}.png")


def _write_form_image(job: FormJob, page: np.ndarray, y0: int) -> None:
    rng = np.random.default_rng([*job.seed, 1])  # its own stream: the crops do not depend on it
    width = max(PAGE_SIZE[0], page.shape[1])
    height = max(PAGE_SIZE[1], y0 + page.shape[0])
    full = job.style.paper + rng.normal(0.0, job.style.noise, size=(height, width))
    full = np.clip(np.rint(full), 0, 255).astype(np.uint8)
    full[y0:y0 + page.shape[0], :page.shape[1]] = page
    path = form_image_path(Path(job.root), job.form_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(full, "L").save(path, format="PNG", compress_level=PNG_LEVEL)


def render_form(job: FormJob) -> dict:
    """Draw one form and write its word, line and sentence images and its XML (written last).

    Args:
        job: the form's plan.

    Returns:
        The form's metadata, JSON-ready: ``id``, ``writer``, ``num_sentences``, ``printed``
        (sentences), ``lines`` (``id``, ``segmentation``, ``grey``, ``components``, ``box``,
        ``text`` with the original spacing, ``words``: ``id``, ``segmentation``, ``tag``, ``text``,
        ``box``, ``cmps``), ``sentences`` (parts: ``id``, ``number``, ``segmentation``, ``grey``,
        ``components``, ``box``, ``words``) and ``empty_image`` (the 0-byte word's id or None).
        Boxes are ``[x, y, w, h]`` in page pixels.
    """
    rng = np.random.default_rng(job.seed)
    words = _words(job, rng)
    layout = _layout(words, job.style, rng)
    page, y0 = _compose(words, job.style, rng)
    starts = {id(w) for k, w in enumerate(words) if k == 0 or w.sentence != words[k - 1].sentence}
    lines = [_line_record(job, n, line, page, y0, starts) for n, line in enumerate(layout)]
    _plant(job, lines)
    all_words = [word for line in lines for word in line["words"]]
    form = {"id": job.form_id, "writer": job.writer_id, "num_sentences": len(job.sentences),
            "printed": list(job.sentences), "lines": lines, "sentences": _sentence_parts(job, layout, lines),
            "empty_image": None if job.empty_image is None else all_words[job.empty_image]["id"]}
    _write_images(job, form, page, y0)
    if job.form_image:
        _write_form_image(job, page, y0)
    size = (max(PAGE_SIZE[0], page.shape[1]), max(PAGE_SIZE[1], y0 + page.shape[0]))
    xml = Path(job.root) / "xml" / f"{job.form_id}.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.with_name(xml.name + ".part")
    tmp.write_text(form_xml(form, size), encoding="ascii")
    tmp.replace(xml)
    return form
