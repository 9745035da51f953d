"""The bundled models under ``recognizers/weights/`` (issues #3, #4, #5): each registered model either ships
a loadable file under 40 MB or says clearly that it is missing, and the shipped examples of a task are
read correctly by that task's bundled model (so the web app's example buttons show right answers)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

import recognizers
from recognizers.registry import REGISTRY, weights_path

pytestmark = pytest.mark.usefixtures("single_thread")

EXAMPLES = Path(str(resources.files("recognizers") / "examples"))


@pytest.fixture(autouse=True)
def _bundled_only(monkeypatch):
    monkeypatch.delenv("RECOGNIZERS_WEIGHTS_DIR", raising=False)  # the package's own files, not a user's


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_bundled_file_loads_or_is_reported_missing(name):
    spec, path = REGISTRY[name], weights_path(REGISTRY[name])
    if not path.is_file():
        with pytest.raises(ValueError, match=rf"model {name!r}: its weights file .* is missing"):
            recognizers.load(name, device="cpu")
        assert name not in recognizers.available()
        return
    assert path.stat().st_size < 40e6
    rec = recognizers.load(name, device="cpu")
    assert (rec.name, rec.task) == (name, spec.task)
    assert name in recognizers.available()


def test_handwriting_examples_are_read_by_the_bundled_model():
    examples = sorted(EXAMPLES.glob("handwriting-*.png"))
    if not examples:  # no examples shipped: nothing to read (the app shows no example row)
        assert not list(EXAMPLES.glob("handwriting-*"))
        return
    rec = recognizers.load("handwriting", device="cpu")  # examples ship only with a bundled model
    texts = [r.text for r in rec.recognize([str(p) for p in examples])]
    assert texts == [p.stem.removeprefix("handwriting-") for p in examples]


# What each shipped formula example shows (held-out synthetic images: fonts and captions never trained on)
FORMULAS = {"formula-fraction.png": r"\frac { a + b } { 2 }",
            "formula-root.png": r"d - \sqrt [ 4 ] { x \times 7 }"}


def test_math_examples_are_read_by_the_bundled_model():
    examples = sorted(EXAMPLES.glob("formula-*.png"))
    assert sorted(p.name for p in examples) == sorted(FORMULAS)  # a new example needs its LaTeX here
    if not weights_path(REGISTRY["posformer"]).is_file():  # no bundled math model: the app has no math tab
        return
    rec = recognizers.load("posformer", device="cpu")
    texts = [r.text for r in rec.recognize([str(p) for p in examples])]  # the app's default: beam 10
    assert texts == [FORMULAS[p.name] for p in examples]


# What each shipped speech example says (held-out synthetic test utterances: voices and sentences never
# trained on), normalised as `evaluate` scores it
SPEECH = {"speech-quality-rather-than-quantity.flac":
          "IT IS THE QUALITY RATHER THAN THE QUANTITY THAT MATTERS"}


def test_speech_examples_are_read_by_the_bundled_model():
    from training.metrics import normalize_transcript

    examples = sorted(EXAMPLES.glob("speech-*"))
    assert sorted(p.name for p in examples) == sorted(SPEECH)  # a new example needs its transcript here
    if not weights_path(REGISTRY["samba-asr"]).is_file():  # no bundled speech model: nothing to read
        return
    rec = recognizers.load("samba-asr", device="cpu")
    texts = [normalize_transcript(r.text) for r in rec.recognize([str(p) for p in examples])]  # beam 4
    assert texts == [SPEECH[p.name] for p in examples]
