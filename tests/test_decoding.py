"""Decoding tests (samba-asr.md §13.6 D1–D6): CTC, prefix scoring, greedy, beam and diverse beam search."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from recognizers.decoding import (
    AlignedToken,
    CTCPrefixScorer,
    DecodingOptions,
    SuppressTokens,
    beam_search,
    ctc_align,
    ctc_greedy,
    greedy_search,
    search,
)

BLANK, SOS, EOS = 0, 1, 2  # the project's special ids (data/tokenizer.py)
NO_SPECIALS = (BLANK, SOS)  # never emitted by the toy decoders


class TrigramToy:
    """A toy decoder whose state is the token history: log p(next | input, second-last, last) from a table.

    The table is random, so the best sequence is unknown but every hypothesis can be rescored exactly.
    """

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table.log_softmax(dim=-1)  # (B, V, V, V)

    @classmethod
    def random(cls, batch: int, vocab: int, seed: int, eos_bias: float = 1.0) -> TrigramToy:
        generator = torch.Generator().manual_seed(seed)
        table = 2 * torch.randn(batch, vocab, vocab, vocab, generator=generator)
        table[..., EOS] += eos_bias  # so that hypotheses end at a moderate length
        return cls(table)

    def subset(self, b: int) -> TrigramToy:
        return TrigramToy(self.table[b:b + 1])

    def to(self, device: str) -> TrigramToy:
        return TrigramToy(self.table.to(device))

    def initial_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch, device = self.table.shape[0], self.table.device
        return torch.arange(batch, device=device), torch.full((batch, 1), SOS, device=device)  # with <sos>

    def step(self, tokens, state):
        inputs, history = state
        history = torch.cat([history, tokens[:, None]], dim=1)
        previous = history[:, -2] if history.shape[1] > 2 else torch.full_like(tokens, SOS)
        return self.table[inputs, previous, tokens], (inputs, history)

    @staticmethod
    def reorder(state, index):
        return state[0][index], state[1][index]

    def rescore(self, b: int, tokens: tuple[int, ...], finished: bool) -> float:
        """Teacher-forced log-probability of a hypothesis (with <eos> when finished)."""
        sequence = [SOS, SOS, *tokens] + ([EOS] if finished else [])
        return sum(self.table[b, sequence[i - 2], sequence[i - 1], sequence[i]].item()
                   for i in range(2, len(sequence)))

    def search(self, fn, options, **kwargs):
        return fn(self.step, self.initial_state(), self.reorder, batch_size=self.table.shape[0], sos_id=SOS,
                  eos_id=EOS, options=options, **kwargs)


def summary(results) -> list[list[tuple[tuple[int, ...], bool]]]:
    return [[(h.tokens, h.finished) for h in result] for result in results]


def random_ctc(batch: int, frames: int, vocab: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(batch, frames, vocab, generator=generator)
    logits[..., BLANK] += 1.0
    return logits.log_softmax(dim=-1)


def options(**kwargs) -> DecodingOptions:
    return DecodingOptions(**{"max_length": 8, "suppress_tokens": NO_SPECIALS, **kwargs})


# ---------------------------------------------------------------------------------------------- D1 CTC


def test_ctc_greedy_collapses_repeats_and_drops_blanks():
    path = [[3, 3, 0, 3, 4, 4, 0, 0], [5, 0, 5, 5, 3, 3, 4, 4]]  # argmax class per frame
    log_probs = F.one_hot(torch.tensor(path), 6).float().mul(5).log_softmax(dim=-1)
    assert ctc_greedy(log_probs, torch.tensor([8, 5]), blank=0) == [[3, 3, 4], [5, 5, 3]]
    assert ctc_greedy(log_probs, torch.tensor([0, 1]), blank=0) == [[], [5]]


def test_ctc_align_spans_on_hand_built_posteriors():
    path = [1, 1, 0, 2, 2, 0, 0, 2]
    log_probs = F.one_hot(torch.tensor(path), 3).float().mul(4).log_softmax(dim=-1)
    spans = ctc_align(log_probs, [1, 2, 2], blank=0)
    assert spans == [AlignedToken(1, 0, 2), AlignedToken(2, 3, 5), AlignedToken(2, 7, 8)]
    assert ctc_align(log_probs, [], blank=0) == []
    with pytest.raises(ValueError, match="CTC needs at least 9"):
        ctc_align(log_probs, [1, 1, 1, 1, 1], blank=0)  # 5 tokens + 4 separating blanks > 8 frames
    with pytest.raises(ValueError, match="non-blank"):
        ctc_align(log_probs, [1, 0], blank=0)


# ----------------------------------------------------------------------------------- D2 prefix scores


def brute_force_prefix(log_probs: torch.Tensor, prefix: tuple[int, ...], blank: int, eos: int):
    """psi(prefix + c) for every c, and the full-sequence probability, by enumerating all V**T paths."""
    frames, vocab = log_probs.shape
    by_candidate = {c: [] for c in range(vocab)}
    full = []
    for path in itertools.product(range(vocab), repeat=frames):
        labels = tuple(k for i, k in enumerate(path) if k != blank and (i == 0 or k != path[i - 1]))
        log_p = sum(log_probs[t, k].item() for t, k in enumerate(path))
        if labels[: len(prefix)] == prefix:
            if labels == prefix:
                full.append(log_p)
            else:
                by_candidate[labels[len(prefix)]].append(log_p)
    lse = lambda xs: torch.tensor(xs, dtype=torch.float64).logsumexp(0).item() if xs else -math.inf  # noqa: E731
    scores = {c: lse(xs) for c, xs in by_candidate.items()}
    scores[eos], scores[blank] = lse(full), -math.inf
    return scores


@pytest.mark.parametrize("prefix", [(), (3,), (3, 3), (3, EOS), (EOS, 3)])
def test_ctc_prefix_score_equals_brute_force(prefix):
    log_probs = random_ctc(batch=2, frames=5, vocab=4, seed=1)  # labels 1, 2(=eos), 3
    lengths = torch.tensor([5, 3])
    scorer = CTCPrefixScorer(log_probs, lengths, blank=BLANK, eos=EOS)
    state = scorer.reorder(scorer.initial_state(), torch.tensor([1, 0, 1]))  # duplicated rows
    for token in prefix:
        state = scorer.extend(state, torch.full((3,), token))
    candidates = torch.arange(4).expand(3, 4)
    scores = scorer.score(state, candidates)
    for row, b in enumerate([1, 0, 1]):
        expected = brute_force_prefix(log_probs[b, : lengths[b]], prefix, BLANK, EOS)
        assert scores[row].tolist() == pytest.approx([expected[c] for c in range(4)], abs=1e-5)


def test_ctc_prefix_scorer_on_long_peaky_inputs_matches_ctc_loss():
    generator = torch.Generator().manual_seed(5)
    log_probs = (8 * torch.randn(2, 150, 6, generator=generator)).log_softmax(dim=-1)  # down to about -60
    lengths = torch.tensor([150, 97])
    labels = torch.randint(3, 6, (2, 25), generator=generator)
    scorer = CTCPrefixScorer(log_probs, lengths, blank=BLANK, eos=EOS)
    state = scorer.initial_state()
    for step in range(labels.shape[1]):
        state = scorer.extend(state, labels[:, step])
    full = scorer.score(state, torch.full((2, 1), EOS))[:, 0]
    expected = -F.ctc_loss(log_probs.transpose(0, 1), labels, lengths, torch.tensor([25, 25]), blank=BLANK,
                           reduction="none")
    assert full.tolist() == pytest.approx(expected.tolist(), rel=1e-5)


# -------------------------------------------------------------------------------------- D3 greedy/beam


def test_beam_one_equals_greedy_and_hypotheses_end_properly():
    toy = TrigramToy.random(batch=4, vocab=7, seed=0)
    greedy = toy.search(greedy_search, options(max_length=6))
    beam = toy.search(beam_search, options(max_length=6, beam_size=1))
    assert [[h.tokens for h in r] for r in beam] == [[h.tokens for h in r] for r in greedy]
    assert [r[0].score for r in beam] == pytest.approx([r[0].score for r in greedy], abs=1e-5)
    assert [r[0].finished for r in beam] == [r[0].finished for r in greedy]
    results = toy.search(beam_search, options(max_length=6, beam_size=4, nbest=4))
    for result in results:
        assert len(result) == 4
        assert [h.score for h in result] == sorted((h.score for h in result), reverse=True)
        for h in result:
            assert h.finished or len(h.tokens) == 6
            assert EOS not in h.tokens
            assert not set(h.tokens) & set(NO_SPECIALS)


def test_length_cap_marks_unfinished_hypotheses():
    toy = TrigramToy.random(batch=2, vocab=6, seed=3, eos_bias=-20.0)  # <eos> practically never chosen
    for fn in (greedy_search, beam_search):
        for result in toy.search(fn, options(max_length=3, beam_size=1)):
            assert len(result[0].tokens) == 3
            assert not result[0].finished


def test_beam_finds_the_optimum_that_greedy_misses():
    # From <sos>: token 3 (0.6) or 4 (0.4); after 3 everything is flat, after 4 <eos> is almost certain.
    table = torch.full((1, 5, 5, 5), 1e-6).log()
    table[0, SOS, SOS, 3], table[0, SOS, SOS, 4] = math.log(0.6), math.log(0.4)
    table[0, SOS, 3, 2:] = math.log(1 / 3)
    table[0, SOS, 4, EOS], table[0, SOS, 4, 3] = math.log(0.99), math.log(0.01)
    table[0, 3, :, EOS] = 0.0
    toy = TrigramToy(table)
    assert toy.search(greedy_search, options())[0][0].tokens[0] == 3
    best = toy.search(beam_search, options(beam_size=2))[0][0]
    assert best.tokens == (4,)
    assert best.finished
    assert best.score == pytest.approx(math.log(0.4 * 0.99), abs=1e-3)


def test_wide_beam_matches_exhaustive_search():
    toy = TrigramToy.random(batch=2, vocab=5, seed=7, eos_bias=0.0)
    cap, labels = 3, (3, 4)
    for b, result in enumerate(toy.search(beam_search, options(max_length=cap, beam_size=64, nbest=3))):
        candidates = [(seq, True) for n in range(cap) for seq in itertools.product(labels, repeat=n)]
        candidates += [(seq, False) for seq in itertools.product(labels, repeat=cap)]
        scored = sorted(((toy.rescore(b, *c), c) for c in candidates), reverse=True)
        assert [(h.tokens, h.finished) for h in result] == [c for _, c in scored[:3]]


def test_length_penalty_normalises_the_final_ranking():
    toy = TrigramToy.random(batch=3, vocab=6, seed=5)
    for result in toy.search(beam_search, options(beam_size=3, nbest=3, length_penalty=1.0)):
        for h in result:
            length = len(h.tokens) + h.finished
            assert h.score == pytest.approx(h.log_prob_att / length, abs=1e-5)
        assert [h.score for h in result] == sorted((h.score for h in result), reverse=True)


def test_stop_bound_current_stops_sooner_and_agrees_without_length_penalty():
    toy = TrigramToy.random(batch=3, vocab=6, seed=8, eos_bias=4.0)
    calls = {"cap": 0, "current": 0}
    for bound in calls:
        def counting_step(tokens, state, bound=bound):
            calls[bound] += 1
            return toy.step(tokens, state)
        opts = options(max_length=30, beam_size=3, nbest=3, length_penalty=1.0, stop_bound=bound)
        results = beam_search(counting_step, toy.initial_state(), toy.reorder, batch_size=3, sos_id=SOS,
                              eos_id=EOS, options=opts)
        assert all(len(r) == 3 for r in results)
    assert calls["current"] < calls["cap"]
    plain = [toy.search(beam_search, options(beam_size=3, nbest=3, stop_bound=b)) for b in ("cap", "current")]
    assert summary(plain[0]) == summary(plain[1])


def test_suppressed_tokens_never_appear():
    toy = TrigramToy.random(batch=3, vocab=7, seed=2)
    opts = options(beam_size=3, nbest=3, suppress_tokens=(*NO_SPECIALS, 4, 5))
    for fn in (greedy_search, beam_search):
        for result in toy.search(fn, opts):
            assert all(set(h.tokens) <= {3, 6} for h in result)
    extra = toy.search(beam_search, options(beam_size=3), logit_filters=[SuppressTokens((3,))])
    assert all(3 not in r[0].tokens for r in extra)


# ----------------------------------------------------------------------------------- D4 joint CTC score


def test_joint_score_components_and_zero_weight():
    toy = TrigramToy.random(batch=2, vocab=6, seed=4)
    log_probs, lengths = random_ctc(batch=2, frames=9, vocab=6, seed=4), torch.tensor([9, 6])
    scorer = CTCPrefixScorer(log_probs, lengths, blank=BLANK, eos=EOS)
    plain = toy.search(beam_search, options(beam_size=3, nbest=3))
    zero = toy.search(beam_search, options(beam_size=3, nbest=3), ctc=scorer)
    summary = lambda results: [[(h.tokens, h.score) for h in r] for r in results]  # noqa: E731
    assert summary(zero) == summary(plain)
    assert all(h.log_prob_ctc is not None for r in zero for h in r)
    weight = 0.3
    joint = toy.search(beam_search, options(beam_size=3, nbest=3, ctc_weight=weight), ctc=scorer)
    for b, result in enumerate(joint):
        for h in result:
            assert h.score == pytest.approx((1 - weight) * h.log_prob_att + weight * h.log_prob_ctc, abs=1e-5)
            assert h.log_prob_att == pytest.approx(toy.rescore(b, h.tokens, h.finished), abs=1e-4)
            if h.finished:  # the full-sequence CTC log-probability, checked against torch's CTC loss
                target = torch.tensor([h.tokens], dtype=torch.long)
                loss = F.ctc_loss(log_probs[b, : lengths[b], None], target, lengths[b:b + 1],
                                  torch.tensor([len(h.tokens)]), blank=BLANK, reduction="sum")
                assert h.log_prob_ctc == pytest.approx(-loss.item(), abs=1e-4)


def test_ctc_candidates_subset_runs_and_respects_weighting():
    toy = TrigramToy.random(batch=2, vocab=8, seed=6)
    scorer = CTCPrefixScorer(random_ctc(2, 10, 8, seed=6), torch.tensor([10, 7]), blank=BLANK, eos=EOS)
    opts = options(beam_size=2, nbest=2, ctc_weight=0.5, ctc_candidates=4)
    for result in toy.search(beam_search, opts, ctc=scorer):
        for h in result:
            assert h.score == pytest.approx(0.5 * h.log_prob_att + 0.5 * h.log_prob_ctc, abs=1e-5)


# -------------------------------------------------------------------------- D5 incremental == rescoring


@pytest.mark.parametrize("beam_size", [1, 4])
def test_incremental_scores_equal_teacher_forced_rescoring(beam_size):
    toy = TrigramToy.random(batch=3, vocab=7, seed=11)
    for b, result in enumerate(toy.search(beam_search, options(beam_size=beam_size, nbest=beam_size))):
        for h in result:
            assert h.log_prob_att == pytest.approx(toy.rescore(b, h.tokens, h.finished), abs=1e-4)
            assert h.score == h.log_prob_att
            assert h.log_prob_ctc is None


# -------------------------------------------------------------------------------- D6 batch invariance


@pytest.mark.parametrize("fn", [greedy_search, beam_search])
def test_batched_decoding_equals_per_input_decoding(fn):
    toy = TrigramToy.random(batch=4, vocab=7, seed=9)
    log_probs, lengths = random_ctc(4, 12, 7, seed=9), torch.tensor([12, 5, 9, 3])
    use_ctc = fn is beam_search
    opts = options(max_length=None, max_length_ratio=0.7, beam_size=1 if not use_ctc else 3,
                   nbest=1 if not use_ctc else 3, ctc_weight=0.3 if use_ctc else 0.0)
    ctc = {"ctc": CTCPrefixScorer(log_probs, lengths, BLANK, EOS)} if use_ctc else {}
    batched = toy.search(fn, opts, lengths=lengths, **ctc)
    for b in range(4):
        ctc = {"ctc": CTCPrefixScorer(log_probs[b:b + 1], lengths[b:b + 1], BLANK, EOS)} if use_ctc else {}
        alone = toy.subset(b).search(fn, opts, lengths=lengths[b:b + 1], **ctc)[0]
        assert [h.tokens for h in batched[b]] == [h.tokens for h in alone]
        assert [h.score for h in batched[b]] == pytest.approx([h.score for h in alone], abs=1e-5)
        assert all(len(h.tokens) <= math.ceil(0.7 * lengths[b].item()) for h in alone)


@pytest.mark.parametrize("fn", [greedy_search, beam_search])
def test_per_input_start_and_end_tokens_equal_separate_searches(fn):
    """Inputs that decode in different directions (PosFormer's l2r and r2l) share one batch: each gets what
    a search with its own start and end token gives, and never emits its own start token."""
    toy = TrigramToy.random(batch=4, vocab=7, seed=5)
    sos, eos = [SOS, EOS, SOS, EOS], [EOS, SOS, EOS, SOS]  # inputs 1 and 3 run "backwards"
    beam = 1 if fn is greedy_search else 3
    opts = options(beam_size=beam, nbest=beam, suppress_tokens=(BLANK,))
    mixed = fn(toy.step, toy.initial_state(), toy.reorder, batch_size=4, sos_id=sos, eos_id=eos, options=opts,
               suppress_sos=True)
    for b in range(4):
        alone = toy.subset(b)
        expected = fn(alone.step, alone.initial_state(), alone.reorder, batch_size=1, sos_id=sos[b],
                      eos_id=eos[b], options=opts, suppress_sos=True)[0]
        assert summary([mixed[b]]) == summary([expected])
        assert [h.score for h in mixed[b]] == pytest.approx([h.score for h in expected], abs=1e-6)
        assert all(sos[b] not in h.tokens for h in mixed[b])
        assert all(eos[b] not in h.tokens for h in mixed[b])  # a finished hypothesis drops its end token
    # suppress_sos with one start token for all is suppress_tokens with it
    same = fn(toy.step, toy.initial_state(), toy.reorder, batch_size=4, sos_id=SOS, eos_id=EOS,
              options=opts, suppress_sos=True)
    assert summary(same) == summary(toy.search(fn, options(beam_size=beam, nbest=beam)))
    with pytest.raises(ValueError, match="sos_id: 2 ids for 4 inputs"):
        fn(toy.step, toy.initial_state(), toy.reorder, batch_size=4, sos_id=[SOS, EOS], eos_id=EOS,
           options=opts)


# ------------------------------------------------------------------------------------- diverse search


def test_diverse_beam_search_spreads_groups():
    toy = TrigramToy.random(batch=2, vocab=8, seed=12)
    plain = toy.search(beam_search, options(beam_size=4, nbest=4))
    one_group = toy.search(beam_search, options(beam_size=4, nbest=4, num_groups=1, diversity_penalty=5.0))
    assert [[h.tokens for h in r] for r in one_group] == [[h.tokens for h in r] for r in plain]
    diverse = toy.search(beam_search, options(beam_size=4, nbest=4, num_groups=4, diversity_penalty=100.0))
    for result in diverse:
        assert len(result) == 4
        assert len({h.tokens[:1] for h in result}) == 4  # each group opened with a different token
        assert [h.score for h in result] == sorted((h.score for h in result), reverse=True)


def test_search_dispatches_and_options_validate():
    toy = TrigramToy.random(batch=2, vocab=6, seed=13)
    for opts in (options(), options(beam_size=2, nbest=2)):
        expected = toy.search(greedy_search if opts.beam_size == 1 else beam_search, opts)
        assert [[h.tokens for h in r] for r in toy.search(search, opts)] == [[h.tokens for h in r]
                                                                              for r in expected]
    bad = [{"beam_size": 0}, {"nbest": 3, "beam_size": 2}, {"max_length": None}, {"ctc_weight": 1.0},
           {"num_groups": 3, "beam_size": 4}, {"temperature": 0.0}, {"ctc_candidates": 1},
           {"length_penalty": -1.0}, {"stop_bound": "never"}]
    for kwargs in bad:
        with pytest.raises(ValueError, match="invalid DecodingOptions"):
            DecodingOptions(**kwargs)
    assert dataclasses.replace(options(), beam_size=3).beam_size == 3
    with pytest.raises(ValueError, match="needs a CTCPrefixScorer"):
        toy.search(beam_search, options(beam_size=2, ctc_weight=0.3))
    with pytest.raises(ValueError, match="encoder lengths"):
        toy.search(beam_search, options(max_length_ratio=0.5))


@pytest.mark.gpu
def test_cuda_search_matches_cpu():
    toy = TrigramToy.random(batch=3, vocab=9, seed=21)
    log_probs, lengths = random_ctc(3, 15, 9, seed=21), torch.tensor([15, 8, 11])
    opts = options(beam_size=4, nbest=4, ctc_weight=0.3, num_groups=2, diversity_penalty=0.5)
    cpu = toy.search(beam_search, opts, ctc=CTCPrefixScorer(log_probs, lengths, BLANK, EOS))
    cuda = toy.to("cuda").search(beam_search, opts, device="cuda",
                                 ctc=CTCPrefixScorer(log_probs.cuda(), lengths.cuda(), BLANK, EOS))
    assert summary(cuda) == summary(cpu)
    assert [h.score for r in cuda for h in r] == pytest.approx([h.score for r in cpu for h in r], abs=1e-4)
    greedy = toy.to("cuda").search(greedy_search, options(), device="cuda")
    assert summary(greedy) == summary(toy.search(greedy_search, options()))
    assert ctc_greedy(log_probs.cuda(), lengths.cuda()) == ctc_greedy(log_probs, lengths)
