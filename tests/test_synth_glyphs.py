"""Glyph variation of the synthetic training writers (corpus version 3): per-glyph jitter and letters
borrowed from a second face, for training writers only."""

from __future__ import annotations

import dataclasses
import string

import numpy as np
import pytest

from data.synth import hands
from data.synth.handwriting import components, render_word
from data.synth.text import TextConfig, TextConfigError, plan_corpus
from tests.test_synth_text import _require_sources


def _still_style() -> hands.WriterStyle:
    """A style without the word-level randomness that would hide glyph differences."""
    style = hands.draw_style(np.random.default_rng(0))
    return dataclasses.replace(style, elastic=0.0, wobble=0.0, letter_spacing=0.3, x_height=40.0)


def _glyphs(**changes) -> hands.GlyphStyle:
    still = hands.GlyphStyle(donor="", borrowed="", size=0.0, width=0.0, rotation=0.0, shift=0.0)
    return dataclasses.replace(still, **changes)


def _faces() -> tuple[str, str]:
    """Two training faces of different families: the writer's and a donor."""
    _require_sources()
    train = hands.accepted_faces()["train"]
    (first, path), *rest = train
    donor = next(p for f, p in rest if f.family != first.family)
    return path, donor


def test_training_writers_vary_their_glyphs_and_held_out_writers_do_not(tmp_path):
    _require_sources()
    writers, jobs = plan_corpus(tmp_path, TextConfig(writers=40, seed=3, version=3))
    train = [w for w in writers if w.split == "train"]
    assert all(w.glyphs is not None for w in train)
    assert all(w.glyphs is None and w.donor is None for w in writers if w.split != "train")
    assert all(j.glyphs is None for j in jobs if j.writer_id in {w.id for w in writers if w.split != "train"})
    families = {f.file: f.family for f, _ in hands.accepted_faces()["train"]}
    donors = [w for w in train if w.glyphs.donor]
    assert len(donors) >= len(train) // 2  # most training writers borrow letters
    for w in donors:
        assert families[w.glyphs.donor] != w.face.family
        assert w.donor
        assert w.donor.endswith(w.glyphs.donor)
        assert w.glyphs.borrowed
        assert set(w.glyphs.borrowed) <= set(string.ascii_letters)
    # persistent per writer: the plan is a function of the seed
    again, _ = plan_corpus(tmp_path, TextConfig(writers=40, seed=3, version=3))
    assert [w.glyphs for w in again] == [w.glyphs for w in writers]
    # version 2 (the shipped models' corpus): the same writers, plain faces
    plain, plain_jobs = plan_corpus(tmp_path, TextConfig(writers=40, seed=3, version=2))
    assert [(w.id, w.face, w.style) for w in plain] == [(w.id, w.face, w.style) for w in writers]
    assert all(w.glyphs is None for w in plain)
    assert all(j.glyphs is None for j in plain_jobs)
    with pytest.raises(TextConfigError, match="corpus version"):
        TextConfig(writers=40, seed=3, version=1).counts()


def _glyph_sizes(ink) -> list[tuple[int, int]]:
    return [(w, h) for _, _, w, h in components(ink.ink > 0.5)]


def test_a_plain_font_draws_every_letter_alike_and_glyph_variation_does_not():
    path, _ = _faces()
    style = _still_style()
    plain = render_word("oooooo", path, style, np.random.default_rng(0))
    varied = render_word("oooooo", path, style, np.random.default_rng(0),
                         glyphs=_glyphs(size=0.06, width=0.08, rotation=0.08, shift=0.05))
    plain_sizes, varied_sizes = _glyph_sizes(plain), _glyph_sizes(varied)
    assert len(plain_sizes) == len(varied_sizes) == 6
    assert max(plain_sizes) <= tuple(v + 2 for v in min(plain_sizes))  # alike, to a pixel of shear
    spread = np.ptp(np.asarray(varied_sizes), axis=0)
    assert spread.max() >= 4


def test_borrowed_letters_come_from_the_donor_and_only_they_do():
    path, donor = _faces()
    style = _still_style()
    jitter = dict(size=0.05, width=0.05, rotation=0.05, shift=0.03)

    def draw(text: str, glyphs: hands.GlyphStyle) -> np.ndarray:
        return render_word(text, path, style, np.random.default_rng(5), glyphs=glyphs, donor=donor).ink

    own = _glyphs(**jitter)
    lends_a = _glyphs(donor="x", borrowed="a", **jitter)
    assert np.array_equal(draw("blue", own), draw("blue", lends_a))  # no borrowed letter in the word
    assert not np.array_equal(draw("banana", own), draw("banana", lends_a))
    assert np.array_equal(draw("banana", lends_a), draw("banana", lends_a))  # a function of the seed


@pytest.mark.parametrize("text", ["a", "Wolf", "it's", "(quick),"])
def test_every_kind_of_word_is_drawn_with_glyph_variation(text):
    path, donor = _faces()
    style = hands.draw_style(np.random.default_rng(1))
    glyphs = _glyphs(donor="x", borrowed=string.ascii_lowercase, size=0.06, width=0.08, rotation=0.08,
                     shift=0.06)
    ink = render_word(text, path, style, np.random.default_rng(2), glyphs=glyphs, donor=donor, struck=True)
    assert ink.ink.max() > 0.5
    assert ink.components
