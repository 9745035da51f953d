"""The Fontsource training hands of text corpus version 4: the pinned manifest, the fetch (against a fake
registry: tests never touch the network) and the corpus's refusal to run without them."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile

import pytest

from data.synth import hands, npm_fonts
from data.synth.math import MissingFontError
from data.synth.text import TextConfig, plan_corpus
from tests.test_synth_text import _require_sources


def test_manifest_pins_distinct_packages_outside_the_held_out_families():
    fonts = npm_fonts.manifest()
    assert len(fonts) >= 80
    assert len({f.name for f in fonts}) == len(fonts) == len({f.file for f in fonts})
    assert all(f.integrity.startswith("sha512-") and f.version.count(".") == 2 for f in fonts)
    assert {f.license for f in fonts} <= {"OFL-1.1", "Apache-2.0", "MIT"}
    held_out = {f.family for f in hands.FACES if f.split != "train"}
    assert not held_out & {f.family for f in hands.npm_faces()}
    assert {f.split for f in hands.npm_faces()} == {"train"}
    system = {f.file for f in hands.FACES}
    assert not system & {f.file for f in fonts}  # a fetched file never shadows a Debian face


def _registry(font: npm_fonts.NpmFont, woff: bytes) -> bytes:
    """A Fontsource-shaped tarball holding ``woff`` as the package's Latin 400 face."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in ((f"package/files/{font.name}-latin-400-normal.woff", woff),
                           ("package/package.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _pin(monkeypatch, tarball: bytes) -> npm_fonts.NpmFont:
    """Make the manifest one package whose pinned integrity is that of ``tarball``."""
    digest = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    font = npm_fonts.NpmFont("test-hand", "1.0.0", "OFL-1.1", f"sha512-{digest}")
    monkeypatch.setattr(npm_fonts, "manifest", lambda: (font,))
    return font


@pytest.fixture
def fake_registry(monkeypatch):
    """One pinned font whose tarball wraps a Debian training face as WOFF; returns (font, tarball)."""
    from fontTools.ttLib import TTFont

    _require_sources(fetched=False)
    (_, path), *_ = hands.accepted_faces()["train"]
    face = TTFont(path)
    face.flavor = "woff"
    woff = io.BytesIO()
    face.save(woff)
    tarball = _registry(npm_fonts.NpmFont("test-hand", "1.0.0", "OFL-1.1", ""), woff.getvalue())
    return _pin(monkeypatch, tarball), tarball


def test_fetch_verifies_converts_and_skips_what_is_there(tmp_path, fake_registry):
    font, tarball = fake_registry
    urls = []

    def download(url):
        urls.append(url)
        return tarball

    summary = npm_fonts.fetch_fonts(tmp_path, download)
    assert summary.fetched == [font.package]
    assert not summary.failed
    assert urls == ["https://registry.npmjs.org/@fontsource/test-hand/-/test-hand-1.0.0.tgz"]
    assert hands.face_problem(str(tmp_path / font.file)) is None  # a usable TrueType hand
    again = npm_fonts.fetch_fonts(tmp_path, download)
    assert again.present == [font.package]
    assert len(urls) == 1


def test_fetch_reports_a_tampered_unreachable_or_broken_package_and_writes_nothing(tmp_path, fake_registry,
                                                                                     monkeypatch):
    font, tarball = fake_registry
    bad = npm_fonts.fetch_fonts(tmp_path, lambda url: tarball + b"x")
    assert "integrity mismatch" in bad.failed[font.package]
    assert not bad.fetched

    def offline(url):
        raise OSError("no route to host")

    down = npm_fonts.fetch_fonts(tmp_path, offline)
    assert "no route to host" in down.failed[font.package]
    junk = _registry(font, b"wOFF but not a font")  # the pinned bytes, broken at the source
    _pin(monkeypatch, junk)
    broken = npm_fonts.fetch_fonts(tmp_path, lambda url: junk)
    assert list(broken.failed) == [font.package]
    assert not list(tmp_path.iterdir())  # no font and no partial file left behind


def test_corpus_version_4_refuses_to_run_without_the_fetched_hands(tmp_path, monkeypatch):
    _require_sources(fetched=False)
    monkeypatch.setenv("RECOGNIZERS_FONT_DIR", str(tmp_path / "empty"))
    hands.accepted_faces.cache_clear()
    try:
        with pytest.raises(MissingFontError, match="recognizers synth fonts"):
            plan_corpus(tmp_path / "out", TextConfig(writers=20, seed=0, version=4))
    finally:
        hands.accepted_faces.cache_clear()


def test_version_4_adds_the_fetched_hands_to_training_only(tmp_path):
    _require_sources()
    v3, _ = plan_corpus(tmp_path / "v3", TextConfig(writers=100, seed=0, version=3))
    v4, _ = plan_corpus(tmp_path / "v4", TextConfig(writers=100, seed=0, version=4))
    held_out = [(w.id, w.face, w.style, w.glyphs) for w in v3 if w.split != "train"]
    assert held_out == [(w.id, w.face, w.style, w.glyphs) for w in v4 if w.split != "train"]
    packages = {w.face.package for w in v4 if w.split == "train"}
    fetched = {f.package for f in hands.npm_faces()}
    assert len(packages & fetched) >= 30  # most of the 70 training writers now draw a Fontsource hand
    assert all(w.glyphs is not None for w in v4 if w.split == "train")


def test_the_command_defaults_to_the_current_corpus_version():
    from data.synth.text import VERSION, VERSIONS
    from recognizers.cli import build_parser

    parser = build_parser()
    base = ["synth", "text", "--out", "x", "--seed", "0"]
    assert parser.parse_args(base).corpus_version == VERSION
    for version in VERSIONS:  # every corpus version is offered, and only those
        assert parser.parse_args([*base, "--corpus-version", str(version)]).corpus_version == version
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--corpus-version", str(max(VERSIONS) + 1)])
