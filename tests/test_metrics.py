"""Metric tests (samba-asr.md §13.6 D7, D8): edit operations, corpus-level WER/CER, normalisation, ExpRate."""

from __future__ import annotations

import random

import pytest

from tests.conftest import require_module
from training.metrics import (
    ErrorRate,
    cer,
    corpus_error_rate,
    edit_ops,
    error_counts,
    expression_rate,
    normalize_transcript,
    wer,
)


@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [
        ("A B C", "A B C", (0, 0, 0)),
        ("A B C", "A X C", (1, 0, 0)),  # substitution
        ("A B C", "A C", (0, 1, 0)),  # deletion
        ("A B C", "A B Y C", (0, 0, 1)),  # insertion
        ("A B C D", "X B D E F", (3, 0, 1)),  # ties with (1, 1, 2): substitutions are preferred
        ("", "A B", (0, 0, 2)),  # empty reference: insertions only
        ("A B", "", (0, 2, 0)),  # empty hypothesis: deletions only
        ("", "", (0, 0, 0)),
    ],
)
def test_edit_ops_hand_cases(ref, hyp, expected):
    assert edit_ops(ref.split(), hyp.split()) == expected


def test_edit_ops_on_characters_and_tokens():
    assert sum(edit_ops("KITTEN", "SITTING")) == 3
    assert edit_ops("KITTEN", "SITTING") == (2, 0, 1)
    assert edit_ops([r"\frac", "{", "a", "}"], [r"\frac", "{", "b", "}"]) == (1, 0, 0)


def test_corpus_level_is_not_a_mean_of_utterance_rates():
    refs = ["A B C D E F G H I J", "K"]  # 10 words and 1 word
    hyps = ["A B C D E F G H I J", "X"]  # 0 errors and 1 error
    total = corpus_error_rate(refs, hyps)
    assert (total.errors, total.ref_units) == (1, 11)
    assert total.rate == pytest.approx(1 / 11)
    assert wer(refs, hyps).rate == pytest.approx(1 / 11)  # the mean of per-utterance rates would be 0.5
    assert sum((error_counts(r, h) for r, h in zip(refs, hyps, strict=True)), ErrorRate()) == total


def test_empty_reference_convention():
    assert corpus_error_rate(["", "A B"], ["X", "A B"]) == ErrorRate(subs=0, dels=0, ins=1, ref_units=2)
    assert wer([""], [""]).rate == 0.0
    assert wer([""], ["A"]).rate == float("inf")
    assert wer([], []).rate == 0.0
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["A", "B"], ["A"])


def test_cer_counts_spaces_and_collapses_whitespace():
    assert cer("AB C", "AB  C ").rate == 0.0
    assert corpus_error_rate("AB C", "ABC", unit="char") == ErrorRate(0, 1, 0, 4)
    with pytest.raises(ValueError, match="unit"):
        corpus_error_rate("A", "A", unit="phone")


def _random_text(rng: random.Random) -> str:
    words = ["THE", "A", "CAT", "SAT", "ON", "MAT", "DON'T", "IT", "I"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))


def test_random_pairs_agree_with_jiwer():
    jiwer = require_module("jiwer")
    rng = random.Random(0)
    refs = [_random_text(rng) for _ in range(60)]
    hyps = [_random_text(rng) if rng.random() < 0.9 else "" for _ in range(60)]
    assert wer(refs, hyps).rate == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert cer(refs, hyps).rate == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    for ref, hyp in zip(refs[:20], hyps[:20], strict=True):
        measures = jiwer.process_words(ref, hyp)
        subs, dels, ins = edit_ops(ref.split(), hyp.split())
        assert subs + dels + ins == measures.substitutions + measures.deletions + measures.insertions
        assert dels - ins == measures.deletions - measures.insertions  # fixed by the two lengths


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello, world!", "HELLO WORLD"),
        ("don't stop", "DON'T STOP"),
        ("Don\u2019t  STOP\n", "DON'T STOP"),
        ("'tis the boys' ball", "TIS THE BOYS BALL"),
        ("well-known -- fact...", "WELL KNOWN FACT"),
        ("o'er the hills", "O'ER THE HILLS"),
        ("rock 'n' roll", "ROCK N ROLL"),
        ("snake_case 42", "SNAKE CASE 42"),
        ("   ", ""),
    ],
)
def test_normalize_transcript(text, expected):
    assert normalize_transcript(text) == expected


def test_normalisation_makes_librispeech_scoring_case_insensitive():
    ref = "HE HOPED THERE WOULD BE STEW FOR DINNER"
    assert wer(ref, normalize_transcript("He hoped there would be stew, for dinner!")).errors == 0


def test_expression_rate():
    refs = ["a + b", r"\frac { 1 } { 2 }", "x ^ { 2 }", "y"]
    hyps = ["a + b", r"\frac { 1 } { 3 }", "x ^ 2", "z + w - v t"]  # distances 0, 1, 2, 5
    rates = expression_rate(refs, hyps)
    assert (rates.count, rates.exprate, rates.le1, rates.le2, rates.le3) == (4, 0.25, 0.5, 0.75, 0.75)
    assert expression_rate([["a", "b"]], [("a", "b")]).exprate == 1.0
    with pytest.raises(ValueError, match="at least one"):
        expression_rate([], [])
