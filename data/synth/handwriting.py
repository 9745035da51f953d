"""One handwritten word: a font face drawn in a writer's style, plus per-word jitter.

Steps (writer-htr.md §10, §15.3), all in numpy and Pillow (no albumentations, hence no OpenCV in the
generator; each operation is a few lines):

1. letters one by one at their natural advance (kerning kept) plus the writer's letter spacing, on a
   baseline that waves along the word (the writer's wobble amplitude);
   a training writer of corpus version 3 (:class:`hands.GlyphStyle`) varies each glyph's size,
   width, rotation and height, and draws some letters with a second face;
2. stroke width towards the writer's pen width (whatever the face's own): Pillow's text stroke
   dilates the glyphs by whole pixels; a thinner pen is one 3x3 erosion, skipped where it would
   remove more than half of the ink;
3. slant (a shear about the baseline) and elastic distortion (a random displacement of the nodes
   of a grid, with the writer's amplitude and cell size, bilinear in between) in one mesh transform;
5. crop to the ink, keeping the baseline row, and the connected components of the ink (8-connected),
   IAM's ``<cmp>`` boxes.

A struck-out word (IAM's ``#``) gets one or two pen strokes across it before the slant. Every
random choice comes from the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .hands import JITTER, GlyphStyle, WriterStyle, face_stroke, font_size, load_font

__all__ = ["INK_LEVEL", "WordInk", "components", "render_word"]

INK_LEVEL = 0.5  # coverage above which a pixel is ink (boxes, components, crops)


@dataclass(frozen=True)
class WordInk:
    """A rendered word, cropped to its ink."""

    ink: np.ndarray  # (H, W) float32 coverage in [0, 1]; 1 = full ink
    baseline: int  # row of the baseline in ``ink`` (may lie outside it, e.g. for an apostrophe)
    components: tuple[tuple[int, int, int, int], ...]  # (x, y, w, h) per component, in ``ink``


def _draw(text: str, path: str, style: WriterStyle, rng: np.random.Generator,
          struck: bool) -> tuple[Image.Image, int]:
    """Letters on a padded canvas (ink = 255) and the baseline row."""
    xh = style.x_height * float(np.exp(rng.normal(0.0, JITTER["size"])))
    font = load_font(path, font_size(path, round(xh)))
    ascent, descent = font.getmetrics()
    spacing = style.letter_spacing * xh
    stroke = max(_dilation(path, style.pen, xh), 0)
    offsets = [font.getlength(text[:i]) + i * spacing for i in range(len(text))]
    advance = font.getlength(text) + (len(text) - 1) * spacing
    canvas, baseline, pad_x = _canvas(xh, ascent, descent, stroke, advance)
    draw = ImageDraw.Draw(canvas)
    period, phase = rng.uniform(3.0, 8.0) * xh, rng.uniform(0.0, 2 * np.pi)
    for ch, x in zip(text, offsets, strict=True):
        dy = style.wobble * xh * np.sin(2 * np.pi * x / period + phase)
        draw.text((pad_x + x, baseline + dy), ch, font=font, fill=255, anchor="ls",
                  stroke_width=stroke, stroke_fill=255)
    if struck:
        _strike(draw, xh, baseline, pad_x, advance, rng)
    return canvas, baseline


def _canvas(xh: float, ascent: int, descent: int, stroke: int,
            advance: float) -> tuple[Image.Image, int, int]:
    """The empty padded canvas of a word, its baseline row and its left padding."""
    pad_y = int(0.6 * xh) + stroke
    height = ascent + descent + 2 * pad_y
    pad_x = int(0.6 * xh + 0.6 * height) + stroke  # room for overhangs, the shear and the warp
    return Image.new("L", (int(advance) + 2 * pad_x, height), 0), pad_y + ascent, pad_x


def _glyph_fonts(text: str, path: str, donor: str | None, xh: float, glyphs: GlyphStyle,
                 pen: float, rng: np.random.Generator) -> list[tuple[object, int, float]]:
    """(font, stroke px, width factor) per character of a writer with glyph variation."""
    plans = []
    for ch in text:
        face = donor if donor and ch in glyphs.borrowed else path
        size = font_size(face, round(xh * float(np.exp(glyphs.size * _normal(rng)))))
        width = float(np.exp(glyphs.width * _normal(rng)))
        width = width if ch.isalpha() else 1.0
        plans.append((load_font(face, size), max(_dilation(face, pen, xh), 0), width))
    return plans


def _normal(rng: np.random.Generator) -> float:
    """A standard normal draw clipped to +-2: one glyph twice its neighbours' size reads as a capital."""
    return float(np.clip(rng.normal(), -2.0, 2.0))


def _draw_glyphs(text: str, path: str, donor: str | None, style: WriterStyle, glyphs: GlyphStyle,
                 rng: np.random.Generator, struck: bool) -> tuple[Image.Image, int]:
    """:func:`_draw` for a writer with glyph variation: each glyph on its own canvas, transformed
    (width, rotation about its foot, shift) and merged into the word with a per-pixel maximum."""
    xh = style.x_height * float(np.exp(rng.normal(0.0, JITTER["size"])))
    plans = _glyph_fonts(text, path, donor, xh, glyphs, style.pen, rng)
    spacing = style.letter_spacing * xh
    advances = [font.getlength(ch) * width for ch, (font, _, width) in zip(text, plans, strict=True)]
    offsets = np.concatenate([[0.0], np.cumsum(np.asarray(advances) + spacing)])
    advance = float(offsets[-1] - spacing)
    ascent = max(font.getmetrics()[0] for font, _, _ in plans)
    descent = max(font.getmetrics()[1] for font, _, _ in plans)
    canvas, baseline, pad_x = _canvas(xh, ascent, descent, max(s for _, s, _ in plans), advance)
    height = canvas.height
    period, phase = rng.uniform(3.0, 8.0) * xh, rng.uniform(0.0, 2 * np.pi)
    for ch, (font, pen, width), x, adv in zip(text, plans, offsets[:-1], advances, strict=True):
        dy = style.wobble * xh * np.sin(2 * np.pi * x / period + phase) + glyphs.shift * xh * _normal(rng)
        pad = pad_x // 2
        glyph = Image.new("L", (int(adv) + 2 * pad, height), 0)
        ImageDraw.Draw(glyph).text((pad, baseline + dy), ch, font=font, fill=255, anchor="ls",
                                   stroke_width=pen, stroke_fill=255)
        angle = glyphs.rotation * _normal(rng)
        if ch.isalpha():  # a resampled dot or comma only blurs: marks keep their shape
            glyph = _turn(glyph, angle, width, (pad + adv / 2, baseline))
        box = (pad_x + round(x) - pad, 0, pad_x + round(x) - pad + glyph.width, height)
        canvas.paste(ImageChops.lighter(canvas.crop(box), glyph), box)
    if struck:
        _strike(ImageDraw.Draw(canvas), xh, baseline, pad_x, advance, rng)
    return canvas, baseline


def _turn(glyph: Image.Image, angle: float, width: float, foot: tuple[float, float]) -> Image.Image:
    """The glyph widened by ``width`` and rotated by ``angle`` (radians) about ``foot`` (x, y)."""
    m = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.diag([width, 1.0])
    inv = np.linalg.inv(m)  # Pillow maps output pixels to input ones
    cx, cy = foot
    coeffs = (inv[0, 0], inv[0, 1], cx - inv[0, 0] * cx - inv[0, 1] * cy,
              inv[1, 0], inv[1, 1], cy - inv[1, 0] * cx - inv[1, 1] * cy)
    return glyph.transform(glyph.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def _strike(draw: ImageDraw.ImageDraw, xh: float, baseline: int, pad_x: int, advance: float,
            rng: np.random.Generator) -> None:
    """One or two pen strokes across the word (IAM's ``#``)."""
    width = max(2, round(0.12 * xh))
    for _ in range(int(rng.integers(1, 3))):
        y0, y1 = (baseline - xh * rng.uniform(0.3, 0.7, size=2))
        draw.line((pad_x - 0.2 * xh, y0, pad_x + advance + 0.2 * xh, y1), fill=255, width=width)


def _dilation(path: str, pen: float, x_height: float) -> int:
    """Pixels to dilate the face's strokes by to approach the writer's pen width; -1: thin them."""
    native = face_stroke(path) * x_height / 40.0
    return int(np.clip(round((pen - native) / 2), -1, 3))


def _thin(canvas: Image.Image) -> Image.Image:
    """One 3x3 erosion, unless it removes more than half of the ink."""
    thin = canvas.filter(ImageFilter.MinFilter(3))
    before, after = (np.count_nonzero(np.asarray(im) > 127) for im in (canvas, thin))
    return thin if after >= 0.5 * before else canvas


def _warp(canvas: Image.Image, baseline: int, slant: float, amplitude: float, cell: float,
          rng: np.random.Generator, thin: bool) -> tuple[Image.Image, int]:
    """Shear about the baseline and elastic distortion in one bilinear mesh transform.

    The ink is first cropped with a margin for the shear and the displacement (and thinned when
    ``thin``: cheaper on the crop than on the padded canvas). The displacement is
    bilinear between the nodes of a grid of ``cell`` pixels, each displaced by ``amplitude`` times a
    standard normal; output (x, y) samples input (x + slant * (y - baseline) + dx, y + dy), so rows
    above the baseline move right for ``slant > 0``.
    """
    left, top, right, bottom = canvas.getbbox() or (0, 0, 1, 1)
    my = int(np.ceil(2.5 * amplitude)) + 2
    mx = int(np.ceil(abs(slant) * (bottom - top + 2 * my))) + my
    box = (max(left - mx, 0), max(top - my, 0), min(right + mx, canvas.width),
           min(bottom + my, canvas.height))
    crop = canvas.crop(box)
    if thin:
        crop = _thin(crop)
    baseline -= box[1]
    w, h = crop.size
    xs = np.linspace(0, w, max(2, round(w / cell) + 1))
    ys = np.linspace(0, h, max(2, round(h / cell) + 1))
    shift = amplitude * rng.normal(0.0, 1.0, size=(2, len(ys), len(xs)))
    sx = xs[None, :] + slant * (ys[:, None] - baseline) + shift[0]
    sy = ys[:, None] + shift[1]
    mesh = []
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            corners = ((i, j), (i + 1, j), (i + 1, j + 1), (i, j + 1))  # Pillow's order: UL, LL, LR, UR
            quad = tuple(float(v) for a, b in corners for v in (sx[a, b], sy[a, b]))
            mesh.append(((round(xs[j]), round(ys[i]), round(xs[j + 1]), round(ys[i + 1])), quad))
    warped = crop.transform(crop.size, Image.Transform.MESH, mesh, resample=Image.Resampling.BILINEAR,
                            fillcolor=0)
    return warped, baseline


def components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x, y, w, h)`` of the 8-connected components of a boolean image, sorted by x then y.

    Runs of ink in each row are joined with the touching runs of the row above (union-find), so the
    cost grows with the number of runs, not of pixels.
    """
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    run_rows, run_starts = np.nonzero(edges == 1)  # row-major order, so starts and ends pair up
    first = np.searchsorted(run_rows, np.arange(h + 1)).tolist()
    rows, starts = run_rows.tolist(), run_starts.tolist()
    ends = (np.nonzero(edges == -1)[1] - 1).tolist()  # inclusive last column of each run
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for r in range(1, h):
        i, j, i_end, j_end = first[r - 1], first[r], first[r], first[r + 1]
        while i < i_end and j < j_end:
            if starts[i] <= ends[j] + 1 and starts[j] <= ends[i] + 1:  # touching, diagonals included
                parent[find(i)] = find(j)
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    boxes: dict[int, list[int]] = {}
    for i, (row, start, end) in enumerate(zip(rows, starts, ends, strict=True)):
        box = boxes.setdefault(find(i), [start, row, end, row])
        box[0], box[2] = min(box[0], start), max(box[2], end)
        box[1], box[3] = min(box[1], row), max(box[3], row)
    return sorted((x0, y0, x1 - x0 + 1, y1 - y0 + 1) for x0, y0, x1, y1 in boxes.values())


def render_word(text: str, path: str, style: WriterStyle, rng: np.random.Generator, *,
                struck: bool = False, glyphs: GlyphStyle | None = None, donor: str | None = None) -> WordInk:
    """Draw one word in a writer's hand.

    Args:
        text: the characters to draw (all in ``hands.CHARSET``).
        path: the writer's font file.
        style: the writer's style.
        rng: the word's generator (jitter, wobble phase, elastic field).
        struck: cross the word out (IAM labels such a word ``#``).
        glyphs: the writer's glyph variation (training writers of corpus version 3), or None.
        donor: the font file of ``glyphs.donor``.

    Returns:
        The ink cropped to its pixels above :data:`INK_LEVEL`, with its baseline and components.

    Raises:
        ValueError: nothing was drawn.
    """
    def draw() -> tuple[Image.Image, int]:
        if glyphs is None:
            return _draw(text, path, style, rng, struck)
        return _draw_glyphs(text, path, donor, style, glyphs, rng, struck)

    canvas, baseline = draw()
    slant = style.slant + rng.normal(0.0, JITTER["slant"])
    canvas, baseline = _warp(canvas, baseline, slant, style.elastic * style.x_height,
                             style.elastic_scale * style.x_height, rng,
                             thin=_dilation(path, style.pen, style.x_height) < 0)
    ink = np.asarray(canvas, dtype=np.float32) / 255.0
    rows, cols = np.nonzero(ink > INK_LEVEL)
    if rows.size == 0:  # hairline marks ('"' of a thin face) can fade below INK_LEVEL in the warp
        canvas, baseline = draw()
        ink = np.asarray(canvas, dtype=np.float32) / 255.0
        rows, cols = np.nonzero(ink > INK_LEVEL)
    if rows.size == 0:
        raise ValueError(f"nothing drawn for {text!r}")
    y0, x0 = rows.min(), cols.min()
    crop = ink[y0:rows.max() + 1, x0:cols.max() + 1]
    return WordInk(np.ascontiguousarray(crop), int(baseline - y0), tuple(components(crop > INK_LEVEL)))
