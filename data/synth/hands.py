"""Synthetic writers for the IAM-layout text corpus: handwriting font faces and persistent styles.

A *writer* is a handwriting-style font face plus a style drawn once per writer from a seeded
generator (writer-htr.md §10): size (x-height), slant, stroke width, letter and word spacing,
baseline wobble and drift, line spacing, ink and paper grey levels, sensor noise and the strength of
an elastic distortion. Every word then gets only a small jitter around its writer's style
(:data:`JITTER`), far below the spread between writers, so writer identity is a real signal.

Faces (Debian packages; platform.md §13) are split by family, so validation and test writers are
unseen hands rather than restyled training fonts:

=====  ==============================================================  ===================================
split  faces                                                           packages
=====  ==============================================================  ===================================
train  dkg (2 styles), Comic Neue (6), Rufscript, Dancing Script (2),  fonts-dkg-handwriting,
       Ecolier court, femkeklaver, Nanum Pen, Nanum Brush, Nanum       fonts-comic-neue, fonts-rufscript,
       Barunpen (2), It wasn't me, Seto (marker print), kiloji (3:     fonts-dancingscript,
       pen print), Havana (casual cursive), Leckerli One (bold         fonts-ecolier-court,
       script), Lobster (condensed script), Cabin Sketch (rough        fonts-femkeklaver,
       print)                                                          fonts-nanum-extra, fonts-dustin,
                                                                       fonts-seto, fonts-kiloji,
                                                                       fonts-havana, fonts-leckerli-one,
                                                                       fonts-lobster, fonts-cabinsketch
val    Purisa (4), Kristi, Yusei Magic                                 fonts-tlwg-purisa-ttf, fonts-kristi,
                                                                       fonts-yusei-magic
test   SteveHand, Delphine, Breip, Kaushan Script, Domestic Manners    fonts-sjfonts, fonts-breip,
                                                                       fonts-kaushanscript, fonts-dustin
=====  ==============================================================  ===================================

A face is accepted only if it draws every character of :data:`CHARSET`: its character map covers
it, every glyph has ink and differs from the font's missing-glyph (``.notdef``) box, and lower case
is really lower case (short letters clearly below the capitals' height). Not used:
fonts-levien-typoscript (missing glyphs), Humor Sans, fonts-bwht and TomsonTalks (capitals only),
``breipfont.ttf`` (a copy of ``Breip.ttf``), dkg's italics ``dkgIt``/``dkgBI`` (the advance of
``q`` is too short: ``quick`` reads ``qick``), and the typefaces that share packages with the hands
(Nanum Gothic/Myeongjo/Square, Dustismo and the other fonts-dustin display faces, ``kiloji_d`` (close
to ``kiloji_b``), ``setofont-ex`` (no Latin letters), Cabin Sketch Bold (a heavy display weight)).
Joscelyn (a 16th-century secretary hand) and Isabella (calligraphic blackletter) are not hands a
reader of modern handwriting meets. The six families after It wasn't me joined the training hands in
corpus version 2: a model trained on the first eleven read unseen hands at 6-55 % CER per face.
Corpus version 3 gives each training writer a :class:`GlyphStyle` (per-glyph jitter and letters
borrowed from a second training face); validation and test writers are drawn as in version 2.
Corpus version 4 adds 87 more training hands, Google Fonts handwriting faces fetched at setup time
from the npm registry (:func:`npm_faces`, :mod:`data.synth.npm_fonts`), after the Debian ones.
"""

from __future__ import annotations

import functools
import logging
import string
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CHARSET",
    "FACES",
    "JITTER",
    "Face",
    "GlyphStyle",
    "WriterStyle",
    "accepted_faces",
    "draw_glyph_style",
    "draw_style",
    "face_problem",
    "face_stroke",
    "font_size",
    "load_font",
    "npm_faces",
]

# Every character the generator draws: fortunes sentences and wamerican words hold nothing else
# (data.synth.sentences). "#" is a label only: struck-out words are drawn, not the "#" glyph.
CHARSET = string.ascii_letters + ".,;:!?\"'()-"

# Per-word jitter (standard deviations) around the writer's style; the writers' ranges in
# draw_style are 5-20 times wider.
# Median height of short lower-case letters over capitals: 0.33-0.86 for the hands above, 0.89-1.06 for
# the capitals-only fonts (Humor Sans, fonts-bwht, TomsonTalks).
_CAPITALS_RATIO = 0.875

JITTER = {"size": 0.02, "slant": 0.025, "ink": 4.0, "baseline": 0.06}


@dataclass(frozen=True)
class Face:
    """One font file that can be a writer's hand."""

    file: str  # file name, located among the system fonts (never a hard-coded path)
    family: str  # faces of a family share a split
    package: str  # the Debian package that ships it
    split: str  # "train", "val" or "test"


def _faces(split: str, package: str, family: str, *files: str) -> tuple[Face, ...]:
    return tuple(Face(f, family, package, split) for f in files)


FACES: tuple[Face, ...] = (
    *_faces("train", "fonts-dkg-handwriting", "dkg", "dkg.ttf", "dkgBd.ttf"),
    *_faces("train", "fonts-comic-neue", "comic-neue", "ComicNeue-Regular.otf", "ComicNeue-Italic.otf",
            "ComicNeue-Light.otf", "ComicNeue-LightItalic.otf", "ComicNeue-Bold.otf",
            "ComicNeue-BoldItalic.otf"),
    *_faces("train", "fonts-rufscript", "rufscript", "Rufscript010.ttf"),
    *_faces("train", "fonts-dancingscript", "dancing-script", "DancingScript-Regular.otf",
            "DancingScript-Bold.otf"),
    *_faces("train", "fonts-ecolier-court", "ecolier-court", "Ecolier-court.ttf"),
    *_faces("train", "fonts-femkeklaver", "femkeklaver", "femkeklaver.ttf"),
    *_faces("train", "fonts-nanum-extra", "nanum-pen", "NanumPen.ttf"),
    *_faces("train", "fonts-nanum-extra", "nanum-brush", "NanumBrush.ttf"),
    *_faces("train", "fonts-nanum-extra", "nanum-barunpen", "NanumBarunpenR.ttf", "NanumBarunpenB.ttf"),
    *_faces("train", "fonts-dustin", "it-wasnt-me", "It_wasn_t_me.ttf"),
    *_faces("train", "fonts-seto", "seto", "setofont.ttf"),
    *_faces("train", "fonts-kiloji", "kiloji", "kiloji.ttf", "kiloji_b.ttf", "kiloji_p.ttf"),
    *_faces("train", "fonts-havana", "havana", "Havana-Regular.otf"),
    *_faces("train", "fonts-leckerli-one", "leckerli-one", "LeckerliOne-Regular.ttf"),
    *_faces("train", "fonts-lobster", "lobster", "lobster.otf"),
    *_faces("train", "fonts-cabinsketch", "cabin-sketch", "CabinSketch-Regular.ttf"),
    *_faces("val", "fonts-tlwg-purisa-ttf", "purisa", "Purisa.ttf", "Purisa-Oblique.ttf", "Purisa-Bold.ttf",
            "Purisa-BoldOblique.ttf"),
    *_faces("val", "fonts-kristi", "kristi", "Kristi.ttf"),
    *_faces("val", "fonts-yusei-magic", "yusei-magic", "YuseiMagic-Regular.ttf"),
    *_faces("test", "fonts-sjfonts", "stevehand", "SteveHand.ttf"),
    *_faces("test", "fonts-sjfonts", "delphine", "Delphine.ttf"),
    *_faces("test", "fonts-breip", "breip", "Breip.ttf"),
    *_faces("test", "fonts-kaushanscript", "kaushan-script", "KaushanScript-Regular.otf"),
    *_faces("test", "fonts-dustin", "domestic-manners", "Domestic_Manners.ttf"),
)


@functools.lru_cache(maxsize=256)  # glyph variation asks for a few sizes of two faces per writer
def load_font(path: str, size: int):
    """A Pillow font (cached: a few sizes per writer are reused for every word)."""
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _glyph(font, ch: str) -> np.ndarray:
    """The glyph's ink, drawn on a canvas large enough for any face at the check size."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (240, 240), 0)
    ImageDraw.Draw(canvas).text((60, 160), ch, font=font, fill=255, anchor="ls")
    return np.asarray(canvas)


def face_problem(path: str) -> str | None:
    """Why a font file cannot be a writer's hand, or None when it draws all of :data:`CHARSET`."""
    from fontTools.ttLib import TTFont

    logging.getLogger("fontTools").setLevel(logging.ERROR)  # "extra bytes in post.stringData" chatter
    with TTFont(path, lazy=True) as tt:
        cmap = tt.getBestCmap() or {}
    missing = "".join(ch for ch in CHARSET if ord(ch) not in cmap)
    if missing:
        return f"no glyph for {missing!r}"
    font = load_font(path, 80)
    notdef = _glyph(font, "\U0010fffd")  # a private-use code point no font maps: the .notdef box
    glyphs = {ch: _glyph(font, ch) for ch in CHARSET}
    bad = "".join(ch for ch, ink in glyphs.items() if not ink.any() or np.array_equal(ink, notdef))
    if bad:
        return f"empty or missing-glyph box for {bad!r}"
    lower, upper = (np.median([-font.getbbox(ch, anchor="ls")[1] for ch in chars])
                    for chars in ("acemnorsuvwxz", "ACEMNORSUVWXZ"))
    if lower > _CAPITALS_RATIO * upper:  # lower case drawn as capitals
        return "capitals only"
    return None


def npm_faces() -> tuple[Face, ...]:
    """The Fontsource training hands of corpus version 4 (:mod:`data.synth.npm_fonts`), in manifest order."""
    from .npm_fonts import manifest

    return tuple(Face(f.file, f.name, f.package, "train") for f in manifest())


@functools.cache
def accepted_faces(extra_hands: bool = False) -> dict[str, tuple[tuple[Face, str], ...]]:
    """Installed faces that pass :func:`face_problem`, per split, in table order.

    Args:
        extra_hands: also the fetched Fontsource training hands (:func:`npm_faces`, after the Debian
            ones; corpus version 4).

    Returns:
        ``{"train": ((face, path), ...), "val": ..., "test": ...}``; a split may be empty when its
        packages are missing.

    Raises:
        math.RendererError: matplotlib (which finds the system fonts) is missing.
    """
    from .math import font_paths
    from .npm_fonts import installed

    paths = font_paths()
    faces = FACES
    if extra_hands:
        paths, faces = {**paths, **installed()}, FACES + npm_faces()
    accepted: dict[str, list[tuple[Face, str]]] = {"train": [], "val": [], "test": []}
    for face in faces:
        if face.file in paths and face_problem(paths[face.file]) is None:
            accepted[face.split].append((face, paths[face.file]))
    return {split: tuple(faces) for split, faces in accepted.items()}


@functools.cache
def font_size(path: str, x_height: float) -> int:
    """The font size (px per em) whose lower-case ``x`` is ``x_height`` pixels tall."""
    measured = -load_font(path, 100).getbbox("x", anchor="ls")[1]
    return max(8, round(100 * x_height / max(measured, 1)))


@functools.cache
def face_stroke(path: str) -> float:
    """The face's own stroke width in px at an x-height of 40 px: twice the ink area over its outline."""
    from PIL import Image, ImageDraw

    font = load_font(path, font_size(path, 40.0))
    canvas = Image.new("L", (1000, 200), 0)
    ImageDraw.Draw(canvas).text((20, 140), "aeonsxum", font=font, fill=255, anchor="ls")
    ink = np.asarray(canvas) > 127
    inner = ink[1:-1, 1:-1] & ink[:-2, 1:-1] & ink[2:, 1:-1] & ink[1:-1, :-2] & ink[1:-1, 2:]
    outline = np.count_nonzero(ink) - np.count_nonzero(inner)
    return float(2.0 * np.count_nonzero(ink) / max(outline, 1))


@dataclass(frozen=True)
class WriterStyle:
    """A writer's persistent style; lengths in x-heights unless marked px (300 dpi)."""

    x_height: float  # px; IAM's x-height is about 30-50 px, so words are about 100-150 px tall
    slant: float  # shear: x shift per px above the baseline; > 0 leans right, as most hands do
    pen: float  # px: the stroke width the glyphs are dilated or eroded towards (ballpoint: 3-8 px)
    letter_spacing: float  # extra gap between letters
    word_spacing: float  # gap between words
    wobble: float  # amplitude of the baseline's wave along a word
    drift: float  # baseline slope across a line (dy/dx)
    line_spacing: float  # baseline to baseline
    ink: float  # grey level of full ink (0 black .. 255 white)
    paper: float  # grey level of the paper
    noise: float  # std of the sensor noise, grey levels
    elastic: float  # amplitude of the elastic distortion
    elastic_scale: float  # correlation length of the elastic displacement field
    margin: int  # px from the page's left edge to the text


def _round(value: float) -> float:
    return round(float(value), 4)  # stored in writers.json: short, and exact on reload


def draw_style(rng: np.random.Generator) -> WriterStyle:
    """Draw one writer's style (the ranges are the between-writer spread).

    Args:
        rng: the writer's own generator.

    Returns:
        The style, rounded to 4 decimals so that ``writers.json`` reproduces it exactly.
    """
    return WriterStyle(
        x_height=_round(rng.uniform(32.0, 48.0)),
        slant=_round(rng.uniform(-0.15, 0.45)),
        pen=_round(rng.uniform(3.0, 8.5)),
        letter_spacing=_round(rng.uniform(-0.04, 0.2)),
        word_spacing=_round(rng.uniform(0.7, 1.6)),
        wobble=_round(rng.uniform(0.0, 0.12)),
        drift=_round(rng.uniform(-0.015, 0.015)),
        line_spacing=_round(rng.uniform(3.2, 4.4)),
        ink=_round(rng.uniform(10.0, 90.0)),
        paper=_round(rng.uniform(222.0, 250.0)),
        noise=_round(rng.uniform(0.5, 3.0)),
        elastic=_round(rng.uniform(0.0, 0.07)),
        elastic_scale=_round(rng.uniform(0.6, 1.6)),
        margin=int(rng.integers(150, 400)),
    )


@dataclass(frozen=True)
class GlyphStyle:
    """A training writer's per-glyph variation (corpus version 3); lengths in x-heights.

    A font draws every ``a`` alike, so a model trained on a few dozen fonts learns those fonts'
    glyphs rather than letters. Each glyph of a training writer therefore gets its own small size,
    width, rotation and height jitter, and some letters come from a second training face (the
    *donor*, persistent per writer), so the training hands are new combinations of letter shapes
    and no two ``a`` of a writer are identical. Validation and test writers draw plain faces, as
    before, so their images are unchanged.
    """

    donor: str  # file name of the donor face ("" when none)
    borrowed: str  # the letters this writer draws with the donor face
    size: float  # std of a glyph's log size
    width: float  # std of a glyph's log width
    rotation: float  # std of a glyph's rotation about its foot, radians
    shift: float  # std of a glyph's vertical shift


def draw_glyph_style(rng: np.random.Generator, face: Face, donors: list[Face]) -> GlyphStyle:
    """Draw a training writer's glyph variation.

    Args:
        rng: the writer's own glyph generator.
        face: the writer's face.
        donors: the faces letters may be borrowed from; those of ``face``'s family are skipped.

    Returns:
        The variation, rounded to 4 decimals so that ``writers.json`` reproduces it exactly.
    """
    others = [d for d in donors if d.family != face.family]
    donor, borrowed = "", ""
    if others and rng.uniform() < 0.8:
        donor = others[int(rng.integers(len(others)))].file
        share = rng.uniform(0.1, 0.5)
        borrowed = "".join(ch for ch in string.ascii_letters if rng.uniform() < share)
    return GlyphStyle(
        donor=donor,
        borrowed=borrowed,
        size=_round(rng.uniform(0.015, 0.06)),
        width=_round(rng.uniform(0.02, 0.08)),
        rotation=_round(rng.uniform(0.01, 0.08)),
        shift=_round(rng.uniform(0.01, 0.06)),
    )
