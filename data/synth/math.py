"""Formula images in handwriting-style fonts: matplotlib mathtext plus stroke, slant, wave and noise.

Rendering uses matplotlib's mathtext (no TeX install; platform.md §13) with
``mathtext.fontset = "custom"`` and every text style (rm, it, bf, sf) set to one *writer*, a Debian
handwriting font. Symbols a font lacks (Greek, big operators, radicals) fall back to Computer
Modern (``mathtext.fallback = "cm"``). Fonts are found by file name among the system fonts
(``matplotlib.font_manager.findSystemFonts``), never by path.

Writers and their split. A font family is in exactly one split, so test writers are never seen in
training:

=====  ==================================================  ==============================================
split  writers (font files)                                Debian packages
=====  ==================================================  ==============================================
train  dkg, dkgIt, dkgBd; ComicNeue Regular, Italic,       fonts-dkg-handwriting, fonts-comic-neue,
       Light, Bold; Rufscript; built-in DejaVu Sans        fonts-rufscript (DejaVu ships with matplotlib)
test   SteveHand, Delphine (two messy hands); Breip        fonts-sjfonts, fonts-breip
=====  ==================================================  ==============================================

Not used: Humor Sans (capitals only, and its ``±`` slot draws a musical note: a wrong label) and
the capitals-only fonts-bwht; every writer above has lower-case letters, so no caption needs to be
kept away from one (``Writer.capitals_only`` guards a future addition).

Augmentation is our own numpy/Pillow code rather than albumentations (which pulls OpenCV; the five
operations needed are a few lines each): stroke width (``MaxFilter``/``MinFilter`` dilation or
erosion of the ink), slant (affine shear), a mild sinusoidal wave in x and y, blur and sensor
noise. Output images are 8-bit grayscale with **white ink on black**, the convention of CoMER's
CROHME bitmaps (posformer.md §2.1), cropped to the ink with a margin and scaled into H in
[MIN_HEIGHT, 256], W <= 1024. Every random choice comes from the generator passed in.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..latex import detokenize

__all__ = [
    "MAX_HEIGHT",
    "MAX_WIDTH",
    "MIN_HEIGHT",
    "WRITERS",
    "MissingFontError",
    "RendererError",
    "Writer",
    "check_renderer",
    "font_paths",
    "render_caption",
    "split_writers",
    "usable_writers",
]

MIN_HEIGHT, MAX_HEIGHT, MAX_WIDTH = 24, 256, 1024  # px, inside ScaleToLimitRange (posformer.md §2.4)
FONT_SIZE = 12  # pt; the size in pixels comes from the drawn dpi
DPI_RANGE = (200.0, 340.0)  # 33-57 px per em: glyph and stroke sizes like CROHME's rasterised ink


class RendererError(RuntimeError):
    """matplotlib is missing; the message says which extra installs it."""


class MissingFontError(RuntimeError):
    """Writer fonts are missing; the message names the Debian packages that provide them."""


@dataclass(frozen=True)
class Writer:
    """One synthetic hand: a font file (or a built-in mathtext fontset) and its split."""

    name: str  # stable id recorded in synth.json
    split: str
    file: str | None  # font file name, located among the system fonts; None: built-in fontset
    package: str  # the Debian package (or "matplotlib")
    capitals_only: bool = False  # lower case would be drawn as capitals: keep such captions away


WRITERS: tuple[Writer, ...] = (
    Writer("dkg", "train", "dkg.ttf", "fonts-dkg-handwriting"),
    Writer("dkg-italic", "train", "dkgIt.ttf", "fonts-dkg-handwriting"),
    Writer("dkg-bold", "train", "dkgBd.ttf", "fonts-dkg-handwriting"),
    Writer("comic-neue", "train", "ComicNeue-Regular.otf", "fonts-comic-neue"),
    Writer("comic-neue-italic", "train", "ComicNeue-Italic.otf", "fonts-comic-neue"),
    Writer("comic-neue-light", "train", "ComicNeue-Light.otf", "fonts-comic-neue"),
    Writer("comic-neue-bold", "train", "ComicNeue-Bold.otf", "fonts-comic-neue"),
    Writer("rufscript", "train", "Rufscript010.ttf", "fonts-rufscript"),
    Writer("dejavusans", "train", None, "matplotlib"),
    Writer("stevehand", "test", "SteveHand.ttf", "fonts-sjfonts"),
    Writer("delphine", "test", "Delphine.ttf", "fonts-sjfonts"),
    Writer("breip", "test", "Breip.ttf", "fonts-breip"),
)


def split_writers(split: str) -> list[Writer]:
    """The writers of one split, in table order."""
    return [w for w in WRITERS if w.split == split]


def usable_writers(split: str, tokens: list[str] | tuple[str, ...]) -> list[Writer]:
    """Writers of ``split`` that can draw the caption (capitals-only fonts only without lower case)."""
    lower = any(len(t) == 1 and t.islower() for t in tokens)
    return [w for w in split_writers(split) if not (lower and w.capitals_only)]


def _matplotlib():
    try:
        import matplotlib
    except ImportError as exc:
        raise RendererError("synth math renders with matplotlib, which is not installed: "
                            "pip install 'recognizers[synth]'") from exc
    return matplotlib


@functools.cache
def _font_paths() -> dict[str, str]:
    """System font files by file name (the first one found wins; fonts are registered once)."""
    from matplotlib import font_manager

    paths: dict[str, str] = {}
    for path in sorted(font_manager.findSystemFonts()):
        paths.setdefault(path.rsplit("/", 1)[-1], path)
    return paths


def font_paths() -> dict[str, str]:
    """System font files by file name, as matplotlib finds them (shared with ``synth text``).

    Raises:
        RendererError: matplotlib is not importable.
    """
    _matplotlib()
    return dict(_font_paths())


def check_renderer() -> None:
    """Fail early, with the fix in the message, when matplotlib or a writer font is missing.

    Raises:
        RendererError: matplotlib is not importable.
        MissingFontError: naming the missing font files and their Debian packages.
    """
    _matplotlib()
    paths = _font_paths()
    missing = [w for w in WRITERS if w.file is not None and w.file not in paths]
    if missing:
        files = ", ".join(w.file for w in missing)
        packages = " ".join(sorted({w.package for w in missing}))
        raise MissingFontError(f"handwriting fonts not found: {files}; install the Debian packages "
                               f"{packages} (make system-deps)")


@functools.cache
def _font_pattern(file: str) -> str:
    """A fontconfig pattern that matplotlib resolves to exactly this file (registered on first use)."""
    from matplotlib import font_manager

    path = _font_paths()[file]
    font_manager.fontManager.addfont(path)
    entry = font_manager.ttfFontProperty(font_manager.get_font(path))
    return f"{entry.name}:style={entry.style}:weight={entry.weight}"


def _mathtext(tokens: list[str] | tuple[str, ...]) -> str:
    """The caption as mathtext source; mathtext has no ``\\limits`` (it places sum limits itself)."""
    # compact: mathtext ignores a script whose "^"/"_" is followed by a space ("x ^ { 2 }")
    return "$" + detokenize([t for t in tokens if t != "\\limits"], compact=True) + "$"


def _render_ink(tokens, writer: Writer, dpi: float) -> np.ndarray:
    """Ink coverage `(H, W)` uint8 (255 = ink) of the caption drawn by ``writer``."""
    matplotlib = _matplotlib()
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import MathTextParser

    if writer.file is None:
        rc = {"mathtext.fontset": writer.name}
        prop = FontProperties(size=FONT_SIZE, math_fontfamily=writer.name)
    else:
        pattern = _font_pattern(writer.file)
        rc = {"mathtext.fontset": "custom", "mathtext.fallback": "cm",
              **{f"mathtext.{style}": pattern for style in ("rm", "it", "bf", "sf", "tt", "cal")}}
        prop = FontProperties(size=FONT_SIZE, math_fontfamily="custom")
    for name in ("matplotlib.mathtext", "matplotlib.font_manager", "matplotlib._mathtext"):
        logging.getLogger(name).setLevel(logging.ERROR)  # glyph-fallback chatter, once per symbol
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # a fresh parser: the parse cache is keyed by text and font properties, not by rcParams
        result = MathTextParser("agg").parse(_mathtext(tokens), dpi=dpi, prop=prop)
    return np.asarray(result.image, dtype=np.uint8).copy()


def _stroke(ink: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Thicker or thinner strokes; erosion only where it keeps most of the ink."""
    r = rng.random()
    if r < 0.35:  # a 3x3 dilation: thicker, but never 5x5, which fills bold fonts' counters
        return ink.filter(ImageFilter.MaxFilter(3))
    if r < 0.6:
        thin = ink.filter(ImageFilter.MinFilter(3))
        before, after = np.count_nonzero(np.asarray(ink) > 127), np.count_nonzero(np.asarray(thin) > 127)
        return thin if after >= 0.5 * before else ink
    return ink


def _slant(ink: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shear by up to +-0.3 (about 17 degrees), widening the canvas so that nothing is cut."""
    shear = float(rng.uniform(-0.3, 0.3))
    w, h = ink.size
    extra = int(np.ceil(abs(shear) * h))
    # output (x, y) samples input (x + shear * y + offset, y): the top moves right for shear > 0;
    # the offset keeps every input column inside the widened output
    offset = -extra if shear > 0 else 0
    return ink.transform((w + extra, h), Image.Transform.AFFINE, (1.0, shear, offset, 0.0, 1.0, 0.0),
                         resample=Image.Resampling.BILINEAR, fillcolor=0)


def _wave(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild elastic-like distortion: a sine displacement of rows in x and of columns in y."""
    h, w = pixels.shape
    ax, ay = rng.uniform(0.0, 0.03 * h), rng.uniform(0.0, 0.03 * h)
    lx, ly = rng.uniform(0.6, 2.0) * h, rng.uniform(0.6, 2.0) * h
    px, py = rng.uniform(0, 2 * np.pi, size=2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = np.clip(xx + ax * np.sin(2 * np.pi * yy / lx + px), 0, w - 1)
    sy = np.clip(yy + ay * np.sin(2 * np.pi * xx / ly + py), 0, h - 1)
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = sx - x0, sy - y0
    src = pixels.astype(np.float64)
    top = src[y0, x0] * (1 - fx) + src[y0, x1] * fx
    bottom = src[y1, x0] * (1 - fx) + src[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _crop_and_fit(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Crop to the ink plus a random margin, then scale into the trained size range."""
    rows, cols = np.nonzero(pixels > 40)
    if rows.size == 0:
        raise ValueError("the rendering holds no ink")
    margin = int(rng.integers(2, 12))
    crop = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    crop = np.pad(crop, margin)
    image = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8), "L")
    w, h = image.size
    scale = min(1.0, MAX_HEIGHT / h, MAX_WIDTH / w)
    if h * scale < MIN_HEIGHT:  # tiny formulas ("x") grow, unless that would break the width limit
        scale = min(MIN_HEIGHT / h, MAX_WIDTH / w)
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR)
    return image


def _finish(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Optional blur and sensor noise; the background stays near black."""
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9))))
    if rng.random() < 0.3:
        pixels = np.asarray(image, dtype=np.float64)
        pixels = pixels + rng.normal(0.0, rng.uniform(2.0, 8.0), size=pixels.shape)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L")
    return image


def render_caption(tokens: list[str] | tuple[str, ...], writer: Writer,
                   rng: np.random.Generator) -> Image.Image:
    """Draw a caption as one augmented handwriting-style formula image.

    Args:
        tokens: CROHME tokens.
        writer: the font to draw with.
        rng: the item's generator (dpi, stroke, slant, wave, margin, blur, noise).

    Returns:
        An ``L`` image, white ink on black, cropped and sized into the trained range.

    Raises:
        RendererError: matplotlib is missing.
        ValueError: mathtext cannot parse the caption, or nothing was drawn.
    """
    ink = Image.fromarray(_render_ink(tokens, writer, float(rng.uniform(*DPI_RANGE))), "L")
    ink = ink.crop((0, 0, *ink.size))  # a copy detached from matplotlib's buffer
    ink = _slant(_stroke(ink, rng), rng)
    pixels = _wave(np.asarray(ink), rng)
    return _finish(_crop_and_fit(pixels, rng), rng)
