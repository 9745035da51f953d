"""The Samba-ASR recognizer bundle: long-audio windows, word times, results, input checks and batching."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import soundfile as sf
import torch

from recognizers import InputError, Result, Word
from recognizers.samba_asr.recognizer import SambaASRRecognizer, split_windows
from tests.speech_fixtures import RATE, noise

pytestmark = pytest.mark.usefixtures("single_thread")


def _wave(seconds: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(noise(seconds, seed)[:, 0])


@pytest.fixture(scope="module")
def recognizer(tiny_asr):
    return SambaASRRecognizer(tiny_asr.model, tiny_asr.tokenizer)


# ---- split_windows ----


@pytest.mark.parametrize(("samples", "max_seconds", "windows"), [
    (8000, 1.0, 1),  # shorter than a window
    (16000, 1.0, 1),  # exactly one window
    (16001, 1.0, 2),
    (3 * 16000 + 123, 1.0, None),
    (10 * 16000, 2.5, None),
    (7 * 16000, 0.05, None),  # a window shorter than the 100 ms search step
])
def test_split_windows_covers_the_wave_in_order(samples, max_seconds, windows):
    wave = torch.from_numpy(np.random.default_rng(samples).standard_normal(samples).astype(np.float32))
    spans = split_windows(wave, max_seconds)
    assert spans[0][0] == 0
    assert spans[-1][1] == samples
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(spans))  # no gap, no overlap
    assert all(0 < b - a <= int(max_seconds * RATE) for a, b in spans)
    if windows is not None:
        assert len(spans) == windows


def test_split_windows_cuts_in_a_quiet_gap():
    """Noise with silent gaps at 1.3-1.6 s and 3.0-3.3 s: with 2 s windows searched over their last
    second, both cuts land in the gaps."""
    wave = _wave(4.5, 1)
    gaps = [(int(1.3 * RATE), int(1.6 * RATE)), (int(3.0 * RATE), int(3.3 * RATE))]
    for a, b in gaps:
        wave[a:b] = 0
    spans = split_windows(wave, 2.0, search_seconds=1.0)
    assert len(spans) == 3
    for (_, cut), (a, b) in zip(spans, gaps, strict=False):
        assert a <= cut <= b


def test_split_windows_without_a_gap_still_respects_the_limit():
    wave = _wave(5.0, 2)
    spans = split_windows(wave, 2.0, search_seconds=0.5)
    assert all(b - a <= 2 * RATE for a, b in spans)
    assert all(b - a >= 1.5 * RATE for a, b in spans[:-1])  # cuts only inside the last 0.5 s


# ---- recognition ----


def _check_words(words, seconds: float) -> None:
    assert all(w.text for w in words)
    assert all(0 <= w.start <= w.end <= seconds for w in words), [(w.start, w.end) for w in words]
    assert all(w1.end <= w2.start for w1, w2 in itertools.pairwise(words)), [(w.start, w.end) for w in words]


def test_words_have_times_inside_the_audio(recognizer):
    waves = [_wave(s, 30 + k) for k, s in enumerate((0.5, 0.73, 1.0))]
    for wave, result in zip(waves, recognizer.recognize(waves), strict=True):
        assert result.words
        _check_words(result.words, wave.numel() / RATE)


def test_long_input_is_recognised_in_windows(tiny_asr, recognizer):
    """window_seconds=1: one Result for the whole input, made of the windows' results in order, with
    word times shifted to the input's time line."""
    windowed = SambaASRRecognizer(tiny_asr.model, tiny_asr.tokenizer, window_seconds=1.0)
    wave = _wave(2.5, 40)
    (result,) = windowed.recognize([wave])
    spans = split_windows(wave, 1.0)
    assert len(spans) >= 3
    parts = recognizer.recognize([wave[a:b] for a, b in spans])
    assert result.text == " ".join(p.text for p in parts if p.text)
    assert result.score == pytest.approx(sum(p.score for p in parts))
    assert result.nbest == ((result.text, result.score),)
    shifted = [(w.text, w.start + a / RATE, w.end + a / RATE) for p, (a, _) in zip(parts, spans, strict=True)
               for w in p.words]
    assert [w.text for w in result.words] == [t for t, _, _ in shifted]
    times = [x for w in result.words for x in (w.start, w.end)]
    assert times == pytest.approx([x for _, start, end in shifted for x in (start, end)], abs=1e-6)
    _check_words(result.words, wave.numel() / RATE)


def test_paths_arrays_and_tensors_give_the_same_result(recognizer, tmp_path):
    samples = noise(0.8, 50)[:, 0]
    path = tmp_path / "a.wav"
    sf.write(path, samples, RATE, subtype="FLOAT")  # lossless, so all three inputs are the same samples
    results = recognizer.recognize([path, str(path), samples, torch.from_numpy(samples)])
    assert all(r == results[0] for r in results[1:])


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batching_does_not_change_results(recognizer, beam_size):
    waves = [_wave(s, 60 + k) for k, s in enumerate((0.9, 0.4, 0.65))]
    together = recognizer.recognize(waves, beam_size=beam_size, nbest=beam_size)
    alone = [recognizer.recognize([w], beam_size=beam_size, nbest=beam_size)[0] for w in waves]
    for a, b in zip(together, alone, strict=True):
        assert a.text == b.text
        assert [t for t, _ in a.nbest] == [t for t, _ in b.nbest]
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.words == b.words


def test_nbest_is_sorted(recognizer):
    (result,) = recognizer.recognize([_wave(0.7, 70)], beam_size=3, nbest=3)
    texts, scores = zip(*result.nbest, strict=True)
    assert len(texts) == 3
    assert list(scores) == sorted(scores, reverse=True)
    assert (result.text, result.score) == result.nbest[0]


def test_result_to_dict():
    result = Result("HELLO WORLD", -1.25, (("HELLO WORLD", -1.25), ("HELLO WORD", -2.5)),
                    (Word("HELLO", 0.1234, 0.5), Word("WORLD", 0.52, 0.98765)))
    assert result.to_dict() == {
        "text": "HELLO WORLD", "score": -1.25,
        "nbest": [{"text": "HELLO WORLD", "score": -1.25}, {"text": "HELLO WORD", "score": -2.5}],
        "words": [{"word": "HELLO", "start": 0.123, "end": 0.5},
                  {"word": "WORLD", "start": 0.52, "end": 0.988}],
    }
    assert "words" not in Result("x", 0.0).to_dict()  # not speech: no word list
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.text = "changed"  # type: ignore[misc]


# ---- bad inputs ----


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: torch.zeros(RATE), "silent"),
    (lambda tmp: np.zeros(RATE, np.float32), "silent"),
    (lambda tmp: torch.zeros(0), "empty"),
    (lambda tmp: torch.full((RATE,), float("nan")), "NaN"),
    (lambda tmp: _silent_file(tmp), "silent"),
    (lambda tmp: tmp / "absent.flac", "cannot read"),
], ids=["silent-tensor", "silent-array", "empty-tensor", "nan-tensor", "silent-file", "missing-file"])
def test_bad_inputs_raise_input_error(recognizer, tmp_path, make, message):
    source = make(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        recognizer.recognize([_wave(0.5, 80), source])
    if not isinstance(source, torch.Tensor | np.ndarray):
        assert str(source) in str(info.value)
    with pytest.raises(InputError, match=message):
        recognizer.load_input(source)


def _silent_file(folder):
    path = folder / "silent.flac"
    sf.write(path, np.zeros(RATE, np.float32), RATE)
    return path


def test_duration_cap_is_configurable(tiny_asr):
    """Inputs longer than the recognizer's cap are refused with a clear message; below it they run."""
    capped = SambaASRRecognizer(tiny_asr.model, tiny_asr.tokenizer, max_seconds=2.0)
    long = 0.1 * torch.randn(3 * RATE)
    with pytest.raises(InputError, match="longer than the 2 s limit"):
        capped.recognize([long])
    assert len(capped.recognize([long[: RATE]], beam_size=1)) == 1
