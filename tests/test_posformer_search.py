"""Bidirectional beam search with reverse rescoring (posformer.md §6; acceptance tests B1–B4): exact
rescoring against independently recomputed teacher-forced scores, pooling and ranking, r2l reversal,
greedy equivalence at beam 1, batching invariance, diverse n-best, length caps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from recognizers import decoding
from recognizers.posformer.search import (
    bidirectional_search,
    both_directions,
    directional_search,
    encode_images,
    search_options,
    sequence_scores,
)
from tests.math_fixtures import tiny_posformer

pytestmark = pytest.mark.usefixtures("single_thread")

SPECIALS = {0, 1, 2}
SIZES = [(40, 90), (32, 64), (40, 90), (24, 120)]  # two of the same size: they share an encoder pass


@pytest.fixture(scope="module")
def model():
    return tiny_posformer(dtype=torch.float64)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(1, h, w, generator=g, dtype=torch.float64) for h, w in SIZES]


@pytest.fixture(scope="module")
def encoded(model, images):
    return encode_images(model, images)


def _reference_score(model, image, tokens, direction):
    """Teacher-forced Σ log p(out) / (n + 1) of one sequence for one image encoded alone, written out
    independently of the search module."""
    memory, mask = model.encode(image[None], torch.zeros(1, *image.shape[1:], dtype=torch.bool))
    body = list(tokens) if direction == "l2r" else list(tokens)[::-1]
    seq = [model.start_token(direction), *body, model.stop_token(direction)]
    log_probs = model.score(memory, mask, torch.tensor([seq[:-1]]))[0].log_softmax(-1)  # (n + 1, V)
    return log_probs.gather(1, torch.tensor(seq[1:])[:, None]).sum().item() / (len(tokens) + 1)


def test_final_scores_are_the_sum_of_both_teacher_forced_scores(model, images, encoded):
    """B3: each candidate's score is its l2r plus its r2l teacher-forced score, recomputed here for the
    image alone; candidates are distinct, sorted best first and free of special tokens."""
    results = bidirectional_search(model, *encoded, search_options(4, 4, max_length=10))
    assert len(results) == len(images)
    for image, hyps in zip(images, results, strict=True):
        assert 1 <= len(hyps) <= 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({h.tokens for h in hyps}) == len(hyps)
        for h in hyps:
            assert not SPECIALS & set(h.tokens)
            assert 0 < len(h.tokens) <= 10 or h.tokens == ()
            assert h.found_by
            assert set(h.found_by) <= {"l2r", "r2l"}
            l2r, r2l = (_reference_score(model, image, h.tokens, d) for d in ("l2r", "r2l"))
            assert h.l2r_score == pytest.approx(l2r, abs=1e-9)
            assert h.r2l_score == pytest.approx(r2l, abs=1e-9)
            assert h.score == pytest.approx(l2r + r2l, abs=1e-9)


def test_best_candidate_is_the_argmax_over_both_directions_pools(model, images, encoded):
    """§6 steps 3–5: pooling the l2r and r2l searches (r2l reversed) and ranking by the two scores picks
    the same best sequence as the driver; both searches contribute to the pools of this model."""
    options = search_options(3, 3, max_length=10)
    pools = [directional_search(model, *encoded, d, options) for d in ("l2r", "r2l")]
    best = bidirectional_search(model, *encoded, options)
    contributed = set()
    for b, image in enumerate(images):
        candidates = {h.tokens for hyps in pools for h in hyps[b]}
        total = {t: sum(_reference_score(model, image, t, d) for d in ("l2r", "r2l")) for t in candidates}
        assert best[b][0].tokens == max(total, key=total.__getitem__)
        assert {h.tokens for h in best[b]} <= candidates
        contributed |= {d for h in best[b] for d in h.found_by}
    assert contributed == {"l2r", "r2l"}


@pytest.mark.parametrize("options", [
    search_options(3, 3, max_length=10),
    search_options(1, 1, max_length=10),
    search_options(4, 4, num_groups=2, diversity_penalty=0.5, max_length=10),
], ids=["beam", "greedy", "diverse"])
def test_both_directions_in_one_batch_equal_two_directional_searches(model, encoded, options):
    """bidirectional_search runs l2r and r2l as one batch of 2B inputs (one decoder step for both); every
    image gets the hypotheses of each direction's own search, in natural order, without specials."""
    both = both_directions(model, *encoded, options)
    for direction in ("l2r", "r2l"):
        alone = directional_search(model, *encoded, direction, options)
        assert len(both[direction]) == len(alone) == len(SIZES)
        for joint, single in zip(both[direction], alone, strict=True):
            assert [(h.tokens, h.finished) for h in joint] == [(h.tokens, h.finished) for h in single]
            assert [h.score for h in joint] == pytest.approx([h.score for h in single], abs=1e-9)
            assert all(not SPECIALS & set(h.tokens) for h in joint)


def test_finished_search_scores_are_normalised_by_length_with_start(model, images, encoded):
    """B2: a finished hypothesis's search score is Σ log p (stop included) / (n + 1): the start token
    counts, the stop token does not; in both directions."""
    checked = 0
    for direction in ("l2r", "r2l"):
        results = directional_search(model, *encoded, direction, search_options(3, 3, max_length=10))
        for image, hyps in zip(images, results, strict=True):
            for h in (h for h in hyps if h.finished):
                expected = _reference_score(model, image, h.tokens, direction)
                assert h.score == pytest.approx(expected, abs=1e-6)  # the search sums in float32
                checked += 1
    assert checked > 0


def test_r2l_hypotheses_come_back_in_natural_order(model, encoded):
    """Plain beam search from <eos> to <sos> gives the r2l hypotheses reversed."""
    options = search_options(3, 3, max_length=10)
    raw = decoding.beam_search(model.step, model.init_state(*encoded, "r2l"),
                               lambda state, index: state.index_select(index), batch_size=len(SIZES),
                               sos_id=model.start_token("r2l"), eos_id=model.stop_token("r2l"),
                               options=replace(options, suppress_tokens=(0, 2)))  # <pad>, start <eos>
    ours = directional_search(model, *encoded, "r2l", options)
    for raw_hyps, hyps in zip(raw, ours, strict=True):
        assert [h.tokens[::-1] for h in raw_hyps] == [h.tokens for h in hyps]
        assert [h.score for h in raw_hyps] == [h.score for h in hyps]


def _greedy_by_recomputation(model, image, max_length):
    """Argmax decoding by full teacher-forced recomputation at every step (no cache, no search code)."""
    memory, mask = model.encode(image[None], torch.zeros(1, *image.shape[1:], dtype=torch.bool))
    seq = [model.start_token("l2r")]
    while len(seq) <= max_length:
        logits = model.score(memory, mask, torch.tensor([seq]))[0, -1].clone()
        logits[[0, model.start_token("l2r")]] = -torch.inf  # suppressed, as in the search
        token = int(logits.argmax())
        if token == model.stop_token("l2r"):
            break
        seq.append(token)
    return tuple(seq[1:])


def test_beam_one_l2r_is_greedy(model, images, encoded):
    """B1: beam 1 in one direction is argmax decoding."""
    results = directional_search(model, *encoded, "l2r", search_options(1, 1, max_length=12))
    for image, (hyp,) in zip(images, results, strict=True):
        assert hyp.tokens == _greedy_by_recomputation(model, image, 12)


def test_batched_equals_per_image(model, images, encoded):
    """Encoding groups equal sizes and pads features only, and the decoder masks the padding: every image
    gets the same hypotheses and scores in a batch as alone."""
    options = search_options(3, 3, max_length=10)
    batched = bidirectional_search(model, *encoded, options)
    for image, hyps in zip(images, batched, strict=True):
        (alone,) = bidirectional_search(model, *encode_images(model, [image]), options)
        assert [h.tokens for h in alone] == [h.tokens for h in hyps]
        assert [h.score for h in alone] == pytest.approx([h.score for h in hyps], abs=1e-9)


def test_encode_images_pads_features_not_pixels(model, images, encoded):
    memory, mask = encoded
    for b, image in enumerate(images):
        alone, _ = encode_images(model, [image])
        h, w = alone.shape[1:3]
        torch.testing.assert_close(memory[b, :h, :w], alone[0], rtol=0, atol=1e-12)
        assert not mask[b, :h, :w].any()
        assert mask[b, h:].all()
        assert mask[b, :, w:].all()
        assert (memory[b][mask[b]] == 0).all()


def test_diverse_nbest_has_distinct_entries(model, encoded):
    options = search_options(4, 4, num_groups=2, diversity_penalty=2.0, max_length=10)
    for hyps in bidirectional_search(model, *encoded, options):
        assert len({h.tokens for h in hyps}) == len(hyps) >= 2
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def test_rescoring_chunks_do_not_change_scores(model, encoded):
    sequences = [(), (5, 6), (7, 8, 9, 10, 11), (12,), (5, 6)]
    index = [0, 1, 2, 3, 0]
    for direction in ("l2r", "r2l"):
        whole = sequence_scores(model, *encoded, index, sequences, direction)
        one_by_one = sequence_scores(model, *encoded, index, sequences, direction, budget=1)
        torch.testing.assert_close(whole, one_by_one, rtol=0, atol=1e-6)


def test_max_length_is_respected_and_capped_by_the_positional_table(images):
    """B4: no stop bias, so an untrained model runs to the cap; a cap beyond the decoder's table
    (tiny: 64 rows) is lowered to what the table can hold."""
    model = tiny_posformer(stop_bias=-20.0)
    encoded = encode_images(model, [images[1].float()])
    (hyps,) = bidirectional_search(model, *encoded, search_options(2, 2, max_length=5))
    assert all(len(h.tokens) == 5 for h in hyps)
    (hyps,) = bidirectional_search(model, *encoded, search_options(1, 1, max_length=500))
    assert len(hyps[0].tokens) == model.cfg.decoder.max_len - 1


def test_search_needs_a_fixed_length_cap(model, encoded):
    options = decoding.DecodingOptions(beam_size=2, max_length=None, max_length_ratio=1.0)
    with pytest.raises(ValueError, match="max_length"):
        bidirectional_search(model, *encoded, options)
