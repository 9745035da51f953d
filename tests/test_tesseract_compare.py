"""benchmarks/tesseract_compare.py: the Tesseract wrapper on printed words and lines, its errors, and the
table and JSON record on the tiny corpus with a tiny untrained model (no accuracy is asserted: the
model is untrained and the timings of a shared test machine mean nothing)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from recognizers.checkpoint import save_bundle
from recognizers.handwriting.recognizer import HandwritingRecognizer
from tests.conftest import load_benchmark, require_tool
from tests.handwriting_fixtures import tiny_model
from training.metrics import cer

pytestmark = pytest.mark.usefixtures("single_thread")

PACKAGES = "tesseract-ocr tesseract-ocr-eng"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("tesseract_compare")


@pytest.fixture
def tesseract():
    """The real tesseract: skipped when missing, a failure under CI=true."""
    require_tool("tesseract", PACKAGES)


@pytest.fixture(scope="module")
def bundle(tiny_text_corpus, tmp_path_factory) -> Path:
    """A tiny untrained handwriting model over the tiny corpus's characters."""
    from data.datasets.iam import read_iam
    from data.handwriting import CharVocabulary

    vocab = CharVocabulary.from_texts(w.text for w in read_iam(tiny_text_corpus).words.values())
    rec = HandwritingRecognizer(tiny_model(vocab=vocab), vocab)
    return save_bundle(tmp_path_factory.mktemp("tess-model") / "handwriting.safetensors", rec.to_bundle())


def _printed(path: Path, text: str) -> Path:
    """Dark print on light paper at a size Tesseract reads (Pillow's built-in font: no system font needed;
    the handwriting fixtures' 11 px default font is too small for it)."""
    font = ImageFont.load_default(size=36)
    image = Image.new("L", (40 + 24 * len(text), 64), 235)
    ImageDraw.Draw(image).text((16, 10), text, fill=30, font=font)
    image.save(path)
    return path


def _fake_tesseract(folder: Path, langs: str) -> None:
    """A ``tesseract`` on PATH that knows only ``--version`` and ``--list-langs`` (with ``langs``)."""
    folder.mkdir()
    script = folder / "tesseract"
    script.write_text("#!/bin/sh\n"
                      'if [ "$1" = --version ]; then echo "tesseract 5.3.0"; echo " leptonica-1.82.0"; fi\n'
                      'if [ "$1" = --list-langs ]; then echo "List of available languages (1):"; '
                      f"echo {langs}; fi\n")
    script.chmod(0o755)


def test_tesseract_reads_a_printed_word_and_line(bench, tesseract, tmp_path):
    word = bench.run_tesseract(_printed(tmp_path / "word.png", "quick"), bench.PSM["words"])
    line = bench.run_tesseract(_printed(tmp_path / "line.png", "the lazy dogs jump over"), bench.PSM["lines"])
    assert word == "quick"
    assert "\n" not in line  # whitespace collapsed, the trailing newline gone
    assert line == line.strip()
    assert cer("the lazy dogs jump over", line).rate < 0.1
    assert bench.tesseract_version().startswith("tesseract ")


def test_a_failed_image_counts_as_empty_output(bench, tesseract, tmp_path):
    first, last = _printed(tmp_path / "first.png", "quick"), _printed(tmp_path / "last.png", "brown")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    alone = [bench.run_tesseract(path, bench.PSM["words"]) for path in (first, bad, last)]
    assert alone[1] is None
    texts, failed, seconds = bench.tesseract_texts([first, bad, last], bench.PSM["words"], jobs=2)
    assert texts == [alone[0], "", alone[2]]  # in input order, whatever order the processes finish in
    assert alone[0] != alone[2]
    assert failed == 1
    assert seconds > 0


def test_missing_tesseract_names_the_debian_packages(bench, bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no tesseract
    with pytest.raises(bench.BenchError, match=PACKAGES):
        bench.tesseract_version()
    assert bench.main(["--model", str(bundle), "--num", "1"]) == 2
    assert PACKAGES in capsys.readouterr().err


def test_tesseract_without_english_names_the_language_package(bench, tmp_path, monkeypatch):
    _fake_tesseract(tmp_path / "bin", "osd")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(bench.BenchError, match=r"eng\.traineddata.*tesseract-ocr-eng"):
        bench.tesseract_version()
    (tmp_path / "bin" / "tesseract").unlink()
    os.rmdir(tmp_path / "bin")
    _fake_tesseract(tmp_path / "bin", "eng")
    assert bench.tesseract_version() == "tesseract 5.3.0"


def test_no_bundled_model_is_a_clear_error(bench, tmp_path, monkeypatch):
    import recognizers.registry

    monkeypatch.setattr(recognizers.registry, "weights_path", lambda spec: tmp_path / spec.weights)
    with pytest.raises(bench.BenchError, match="--model FILE"):
        bench._model_file(None)
    with pytest.raises(bench.BenchError, match="no such file"):
        bench._model_file(str(tmp_path / "missing.ckpt"))


def test_selection_is_deterministic_and_spread_over_the_split():
    from recognizers.batch import spread_indices  # shared with `recognizers evaluate --limit`

    assert spread_indices(10, 20) == list(range(10))
    assert spread_indices(10, None) == list(range(10))
    picked = spread_indices(3007, 500)
    assert picked == spread_indices(3007, 500)
    assert len(set(picked)) == 500
    assert (picked[0], picked[-1] >= 3000) == (0, True)  # from the first writer to the last


def test_table_and_record_on_the_tiny_corpus(bench, tesseract, tiny_text_corpus, bundle, tmp_path, capsys):
    out = tmp_path / "record" / "tess.json"
    code = bench.main(["--data", str(tiny_text_corpus), "--model", str(bundle), "--num", "3", "--jobs", "2",
                       "--out", str(out)])
    table = capsys.readouterr().out.splitlines()
    assert code == 0
    assert table[0].split() == ["level", "system", "samples", "CER", "WER", "s/sample", "failed"]
    assert [row.split()[:3] for row in table[1:]] == [["words", "ours", "3"], ["words", "tesseract", "3"],
                                                      ["lines", "ours", "3"], ["lines", "tesseract", "3"]]
    record = json.loads(out.read_text())
    assert record["versions"]["tesseract"].startswith("tesseract ")
    assert record["versions"]["torch"] == torch.__version__
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()[:12]
    assert record["model"] == {"name": "handwriting", "file": str(bundle), "sha256": digest}
    assert record["corpus"] == str(tiny_text_corpus)
    assert list(record["levels"]) == ["words", "lines"]
    for level, psm in (("words", 8), ("lines", 7)):
        entry = record["levels"][level]
        assert entry["split"] == str(tiny_text_corpus / "splits" / "aachen" / "test.uttlist")
        ours, theirs = entry["rows"]
        assert (ours["system"], theirs["system"], theirs["psm"]) == ("ours", "tesseract", psm)
        assert all(r["samples"] == 3 and r["cer"] >= 0 and r["wer"] >= 0 for r in entry["rows"])
        assert isinstance(theirs["failed"], int)


def test_our_row_matches_recognizers_evaluate(bench, tiny_text_corpus, bundle, tmp_path, monkeypatch, capsys):
    """With --num over the split size every test line is scored: our row is `recognizers evaluate`'s."""
    from recognizers.cli import main as recognizers_main

    monkeypatch.setattr(bench, "tesseract_version", lambda: "tesseract (stub)")
    monkeypatch.setattr(bench, "tesseract_texts",
                        lambda images, psm, jobs: ([""] * len(images), len(images), 0.5))  # all failed
    out = tmp_path / "tess.json"
    assert bench.main(["--data", str(tiny_text_corpus), "--model", str(bundle), "--level", "lines",
                       "--num", "100000", "--out", str(out)]) == 0
    capsys.readouterr()
    entry = json.loads(out.read_text())["levels"]["lines"]
    ours, theirs = entry["rows"]
    assert recognizers_main(["evaluate", "--task", "text", "--data", str(tiny_text_corpus), "--level",
                             "lines", "--model", str(bundle), "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert entry["samples"] == entry["split_samples"] == report["n"]
    assert (ours["cer"], ours["wer"]) == (report["metrics"]["cer"], report["metrics"]["wer"])
    assert (theirs["cer"], theirs["wer"], theirs["failed"]) == (1.0, 1.0, report["n"])  # all empty
