"""The handwriting recognizer bundle (issue #5): model files, input checks, polarity, batching, greedy and
beam search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import recognizers
from data.handwriting import CharVocabulary, HandwritingConfig, load_handwriting, normalize_image
from recognizers import InputError, Result, decoding
from recognizers.checkpoint import CheckpointError, read_bundle, save_bundle
from recognizers.handwriting.recognizer import HandwritingImage, HandwritingRecognizer
from recognizers.handwriting.search import encode_images
from recognizers.registry import REGISTRY, weights_path
from tests.handwriting_fixtures import tiny_model, tiny_vocab, word_pixels, write_words

pytestmark = pytest.mark.usefixtures("single_thread")

WORDS = {"a": "fox", "b": "Jumps", "c": "lazy", "d": "13"}


@pytest.fixture(scope="module", params=["fphtr", "sar"])
def recognizer(request):
    return HandwritingRecognizer(tiny_model(request.param, max_seq_len=10), tiny_vocab())


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    return write_words(tmp_path_factory.mktemp("words"), WORDS)


def test_results_are_texts_over_the_vocabulary(recognizer, words):
    results = recognizer.recognize(list(words.values()), beam_size=3, nbest=2)
    assert len(results) == len(words)
    for result in results:
        assert isinstance(result, Result)
        assert result.nbest[0] == (result.text, result.score)
        assert 1 <= len(result.nbest) <= 2
        assert len(result.text) <= 10
        assert not recognizer.vocab.unknown(result.text)
        assert [s for _, s in result.nbest] == sorted((s for _, s in result.nbest), reverse=True)


def test_bundle_round_trip_gives_identical_results(recognizer, words, tmp_path):
    path = save_bundle(tmp_path / "htr.safetensors", recognizer.to_bundle())
    bundle = read_bundle(path)
    assert bundle.model == "handwriting"
    assert json.loads(bundle.extras["vocab"])[:3] == ["<pad>", "<sos>", "<eos>"]
    loaded = HandwritingRecognizer.from_bundle(bundle)
    assert loaded.vocab == recognizer.vocab
    assert loaded.model.cfg == recognizer.model.cfg
    assert loaded.preprocess == recognizer.preprocess
    inputs = list(words.values())
    assert loaded.recognize(inputs) == recognizer.recognize(inputs)
    beam = {"beam_size": 3, "nbest": 3}
    assert loaded.recognize(inputs, **beam) == recognizer.recognize(inputs, **beam)


def test_bundle_errors_are_checkpoint_errors(recognizer):
    bundle = recognizer.to_bundle()
    with pytest.raises(CheckpointError, match="vocabulary"):
        HandwritingRecognizer.from_bundle(type(bundle)(bundle.model, bundle.config, {}, bundle.state_dict))
    state = dict(bundle.state_dict)
    state.pop("decoder.classifier.bias")
    with pytest.raises(CheckpointError, match="missing"):
        HandwritingRecognizer.from_bundle(type(bundle)(bundle.model, bundle.config, bundle.extras, state))
    small = CharVocabulary("ab").to_json()
    with pytest.raises(CheckpointError, match="classes"):
        HandwritingRecognizer.from_bundle(type(bundle)(bundle.model, bundle.config, {"vocab": small},
                                                       bundle.state_dict))


def test_greedy_equals_beam_one(recognizer, words):
    images = [recognizer.load_input(p).pixels for p in words.values()]
    greedy = recognizer.recognize([HandwritingImage(x) for x in images])
    model, cfg = recognizer.model, recognizer.model.cfg
    options = decoding.DecodingOptions(beam_size=1, max_length=cfg.max_seq_len,
                                       suppress_tokens=(cfg.pad_id, cfg.sos_id))
    beam = decoding.beam_search(model.step, model.init_state(encode_images(model, images)),
                                lambda state, index: state.index_select(index), batch_size=len(images),
                                sos_id=cfg.sos_id, eos_id=cfg.eos_id, options=options)
    for result, (hyp,) in zip(greedy, beam, strict=True):
        assert result.text == recognizer.vocab.decode(hyp.tokens)
        assert result.score == pytest.approx(hyp.score, abs=1e-4)


def test_results_do_not_depend_on_batching(recognizer, words):
    inputs = list(words.values())
    together = recognizer.recognize(inputs, beam_size=2)
    alone = [recognizer.recognize([p], beam_size=2)[0] for p in inputs]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.score for r in together] == pytest.approx([r.score for r in alone], abs=1e-4)


def test_load_input_matches_the_training_pipeline_and_fixes_polarity(recognizer):
    pixels = word_pixels("over")
    expected = normalize_image(pixels)
    assert torch.equal(recognizer.load_input(pixels).pixels, expected)  # arrays, as IAMDataset yields them
    assert torch.equal(recognizer.load_input(torch.from_numpy(pixels)).pixels, expected)
    assert torch.equal(recognizer.load_input(Image.fromarray(pixels)).pixels, expected)
    assert torch.equal(recognizer.load_input(255 - pixels).pixels, expected)  # light ink on dark: inverted
    colour = np.repeat(pixels[..., None], 3, axis=2)
    assert torch.equal(load_handwriting(colour), expected)
    kept = load_handwriting(255 - pixels, HandwritingConfig(polarity="dark_on_light"))
    assert not torch.equal(kept, expected)


def test_bad_inputs_name_the_file(recognizer, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 20), 240).save(blank)
    for path in (empty, broken, blank, tmp_path / "missing.png"):
        with pytest.raises(InputError, match=str(path.name)):
            recognizer.load_input(path)
        with pytest.raises(InputError, match=str(path.name)):
            recognizer.recognize([path])
    with pytest.raises(InputError, match="blank"):
        recognizer.load_input(blank)


def test_registered_for_the_text_task(tmp_path, monkeypatch):
    spec = REGISTRY["handwriting"]
    assert (spec.task, spec.recognizer_class()) == ("text", HandwritingRecognizer)
    assert HandwritingRecognizer.name == "handwriting"
    assert HandwritingRecognizer.task == "text"
    monkeypatch.setenv("RECOGNIZERS_WEIGHTS_DIR", str(tmp_path))
    if not weights_path(spec).is_file():  # nothing bundled yet: loading says so
        with pytest.raises(ValueError, match=r"weights file .* is missing"):
            recognizers.load("handwriting")
