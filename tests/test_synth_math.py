"""`recognizers synth math`: formula grammar, font hold-out, CROHME layout, determinism."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.datasets.crohme import scan_crohme
from data.latex import detokenize, tokenize_latex
from data.synth import math as synth_math
from data.synth.expressions import GREEK, MAX_TOKENS, caption_split, sample_caption, sample_for_split
from data.synth.math_corpus import MathConfig, MathConfigError, synthesize_math
from data.vocab import crohme_vocab
from recognizers.cli import main
from tests.conftest import IN_CI

ARGS = ["--num", "12", "--test-fraction", "0.25"]


def _require_fonts() -> None:
    try:
        synth_math.check_renderer()
    except (synth_math.RendererError, synth_math.MissingFontError) as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """12 images (9 train, 3 test), made once with two workers through the CLI."""
    _require_fonts()
    out = tmp_path_factory.mktemp("synth-math") / "corpus"
    assert main(["synth", "math", "--out", str(out), "--seed", "7", "--jobs", "2", *ARGS]) == 0
    return out


def _captions(root: Path) -> list[str]:
    return (root / "caption.txt").read_text().splitlines()


# --- grammar ------------------------------------------------------------------------------------------


def test_grammar_covers_every_construct_within_budget():
    vocab = crohme_vocab()
    captions = [sample_caption(np.random.default_rng([0, i])) for i in range(400)]
    seen = {t for c in captions for t in c}
    for tokens in captions:
        assert 3 <= len(tokens) <= MAX_TOKENS
        assert not vocab.unknown(tokens)
        assert tokenize_latex(detokenize(tokens)).tokens == tuple(tokens)  # valid, normalised CROHME form
    texts = [" ".join(c) for c in captions]
    constructs = {
        "fraction": "\\frac {", "root": "\\sqrt {", "root with index": "\\sqrt [", "sum": "\\sum _ {",
        "sum with limits": "\\sum \\limits", "integral": "\\int _ {", "limit": "\\lim _ {",
        "superscript": "^ {", "subscript": "_ {", "prime": "\\prime", "brackets": "( ",
        "set braces": "\\{", "absolute value": "| ", "dots": "\\cdots", "quantifier": "\\forall",
    }
    for construct, text in constructs.items():
        assert any(text in t for t in texts), construct
    nested = [t for t in texts if "^ { " in t and any(p in t.split("^ {", 1)[1].split("}")[0]
                                                     for p in ("^ {", "_ {"))]
    assert nested, "no nested script"
    assert seen & set(GREEK), "no Greek letter"
    assert seen >= {"\\sin", "\\cos", "\\tan", "\\log", "=", "<", "\\leq", "\\neq"}
    assert seen >= set("0123456789")
    assert any(t.isupper() for t in seen)


def test_caption_split_is_stable_and_sampling_respects_it():
    assert caption_split("x ^ { 2 }") == caption_split(["x", "^", "{", "2", "}"])
    shares = [caption_split(sample_caption(np.random.default_rng([1, i]))) for i in range(300)]
    assert 0.1 < shares.count("test") / len(shares) < 0.3
    for split in ("train", "test"):
        tokens = sample_for_split(np.random.default_rng([2, 0]), split)
        assert caption_split(tokens) == split
    a, b = (sample_caption(np.random.default_rng([3, 5])) for _ in range(2))
    assert a == b


# --- corpus -------------------------------------------------------------------------------------------


def test_corpus_reads_back_in_crohme_layout(corpus):
    info = json.loads((corpus / "synth.json").read_text())
    assert info["counts"] == {"train": 9, "test": 3}
    assert info["failed"] == []
    assert info["seed"] == 7
    assert info["version"] >= 1
    fonts = {split: {w.name for w in synth_math.split_writers(split)} for split in ("train", "test")}
    assert {s: set(names) for s, names in info["fonts"].items()} == fonts
    assert not fonts["train"] & fonts["test"]
    for split in ("train", "test"):
        assert set(info["images_per_font"][split]) <= fonts[split]
        samples = scan_crohme(corpus / split)
        assert len(samples) == info["counts"][split]
        for sample in samples:
            assert caption_split(sample.tokens) == split
            assert tokenize_latex(" ".join(sample.tokens)).tokens == tuple(sample.tokens)
            assert synth_math.MIN_HEIGHT <= sample.height <= synth_math.MAX_HEIGHT
            assert 16 <= sample.width <= synth_math.MAX_WIDTH
            pixels = np.asarray(Image.open(sample.image))
            assert pixels.dtype == np.uint8
            assert pixels.ndim == 2
            ink = np.mean(pixels > 128)
            assert 0.01 < ink < 0.5, ink  # white ink on a black background, not blank
    train = {line.split(None, 1)[1] for line in _captions(corpus / "train")}
    test = {line.split(None, 1)[1] for line in _captions(corpus / "test")}
    assert not train & test


def test_same_seed_same_bytes_whatever_the_jobs(corpus, tmp_path):
    out = tmp_path / "again"
    summary = synthesize_math(out, MathConfig(12, 7, 0.25), jobs=1, progress=False)
    assert summary.counts == {"train": 9, "test": 3}
    for split in ("train", "test"):
        assert _captions(out / split) == _captions(corpus / split)
        for png in sorted((corpus / split / "img").glob("*.png")):
            assert (out / split / "img" / png.name).read_bytes() == png.read_bytes(), png.name
    other = tmp_path / "other"
    synthesize_math(other, MathConfig(12, 8, 0.25), jobs=1, progress=False)
    assert _captions(other / "train") != _captions(corpus / "train")


def test_rerun_resumes_and_refuses_other_settings(corpus, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(corpus, out)
    victim = out / "train" / "img" / "synth_train_000004.png"
    victim.unlink()
    kept = out / "train" / "img" / "synth_train_000000.png"
    before = kept.stat().st_mtime_ns
    synthesize_math(out, MathConfig(12, 7, 0.25), jobs=1, progress=False)
    assert victim.read_bytes() == (corpus / "train" / "img" / victim.name).read_bytes()
    assert kept.stat().st_mtime_ns == before  # finished images are not redrawn
    with pytest.raises(MathConfigError, match="other settings"):
        synthesize_math(out, MathConfig(12, 9, 0.25), jobs=1, progress=False)


# --- errors and CLI -----------------------------------------------------------------------------------


def test_missing_fonts_name_the_packages(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(synth_math, "_font_paths", lambda: {})
    with pytest.raises(synth_math.MissingFontError, match="fonts-sjfonts"):
        synth_math.check_renderer()
    assert main(["synth", "math", "--out", str(tmp_path / "x"), "--seed", "1", *ARGS]) == 2
    assert "fonts-dkg-handwriting" in capsys.readouterr().err


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(synth_math.RendererError, match=r"recognizers\[synth\]"):
        synth_math.check_renderer()


def test_bad_sizes_are_usage_errors(tmp_path):
    with pytest.raises(MathConfigError):
        MathConfig(1, 0, 0.5).counts()
    with pytest.raises(MathConfigError):
        MathConfig(5, -1).counts()


def test_help_does_not_import_torch():
    code = ("import sys\nfrom recognizers.cli import main\n"
            "try:\n    main(['synth', 'math', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert "--jobs" in result.stdout
    assert "CROHME" in result.stdout
