"""Greedy and beam search over a model's step function (model-agnostic; imports no model code).

Search is split into small phases, after openai/whisper's ``decoding.py``: options and results are frozen
dataclasses, logit filters are small objects, and the model's recurrent state is an explicit value passed
in and returned. References: joint CTC/attention scoring, Watanabe et al. (IEEE JSTSP 2017); diverse beam
search, Vijayakumar et al., "Diverse Beam Search" (AAAI 2018), with Hamming diversity.

Contract with the model (N = hypotheses in flight, V = vocabulary):

* ``step(tokens, state) -> (scores, state)``: ``tokens`` `(N,)` long holds each hypothesis's last token
  (``sos_id`` on the first call); ``scores`` `(N, V)` are log-probabilities or logits of the next token
  (search applies ``log_softmax``, so either works). Row i of everything belongs to hypothesis i.
* ``reorder(state, index) -> state``: ``index`` `(N',)` long picks rows of ``state`` (rows may repeat
  or be dropped). Every per-hypothesis tensor, the encoder memory included, must follow it.
* The initial ``state`` has one row per input (``batch_size`` rows). Beam search first calls
  ``reorder(state, arange(B).repeat_interleave(beam_size))``; both searches drop inputs that are done
  with ``reorder``, so N changes between steps.

Every search function is called as ``fn(step, state, reorder, *, batch_size, sos_id, eos_id, options,
...)``; e.g. ``reorder = lambda state, index: state.index_select(index)``. ``sos_id`` and ``eos_id`` are
one id for every input or a sequence of B ids, one per input: inputs that decode in different directions
(PosFormer's l2r and r2l searches) then share one batch, so the model steps once for both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .ctc import CTCPrefixScorer, CTCState
from .options import DecodingOptions, Hypothesis, LogitFilter, SuppressTokens

__all__ = ["ReorderFn", "StepFn", "beam_search", "greedy_search", "search"]

StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]
ReorderFn = Callable[[Any, Tensor], Any]
_DEFAULTS = DecodingOptions()  # frozen, so one shared default instance is safe


def _filters(options: DecodingOptions, extra: Sequence[LogitFilter]) -> list[LogitFilter]:
    return ([SuppressTokens(options.suppress_tokens)] if options.suppress_tokens else []) + list(extra)


def _per_input(ids: int | Sequence[int], batch_size: int, name: str, dev: torch.device) -> Tensor:
    """`(B,)` long: one id for every input, or one per input."""
    if isinstance(ids, int):
        return torch.full((batch_size,), ids, dtype=torch.long, device=dev)
    if len(ids) != batch_size:
        raise ValueError(f"{name}: {len(ids)} ids for {batch_size} inputs")
    return torch.tensor([int(i) for i in ids], dtype=torch.long, device=dev)


def _log_probs(scores: Tensor, temperature: float, filters: list[LogitFilter], history: Tensor,
               row_sos: Tensor | None = None) -> Tensor:
    """Model scores `(N, V)` -> log-probabilities `(N, V)` after temperature and filters, in float32 or
    the model's own wider dtype (a float64 model keeps float64 sums: its searched scores then equal
    teacher-forced ones to float64 rounding). ``row_sos`` `(N,)`: each row's own start token, set to
    -inf like a suppressed token (``suppress_sos``)."""
    if scores.dim() != 2 or scores.shape[0] != history.shape[0]:
        raise ValueError(f"step must return (N, V) scores, N={history.shape[0]}; got {tuple(scores.shape)}")
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    if temperature != 1.0:
        scores = scores / temperature
    scores = scores.log_softmax(dim=-1)
    for logit_filter in filters:
        scores = logit_filter.apply(scores, history)
    if row_sos is not None:
        scores = scores.scatter(1, row_sos[:, None], -math.inf)
    return scores


def _length_caps(options: DecodingOptions, batch_size: int, lengths: Tensor | None) -> list[int]:
    """Per-input cap on output tokens."""
    caps = [options.max_length or math.inf] * batch_size
    if options.max_length_ratio is not None:
        if lengths is None or lengths.shape != (batch_size,):
            raise ValueError(f"max_length_ratio needs encoder lengths of shape ({batch_size},)")
        relative = [max(1, math.ceil(options.max_length_ratio * n)) for n in lengths.tolist()]
        caps = [min(a, b) for a, b in zip(caps, relative, strict=True)]
    return [int(c) for c in caps]


def _joint(att: Any, ctc: Any, ctc_weight: float) -> Any:
    """(1 - lambda)·att + lambda·ctc; exactly att when lambda is 0 (so -inf CTC scores cannot give NaN)."""
    return att if ctc_weight == 0 else (1 - ctc_weight) * att + ctc_weight * ctc


def _rank(joint: float, length: int, alpha: float) -> float:
    return joint / length**alpha if alpha else joint


def _device(device: torch.device | str | None, lengths: Tensor | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return lengths.device if lengths is not None else torch.device("cpu")


@torch.no_grad()
def greedy_search(step: StepFn, state: Any, reorder: ReorderFn, *, batch_size: int,
                  sos_id: int | Sequence[int], eos_id: int | Sequence[int],
                  options: DecodingOptions = _DEFAULTS, lengths: Tensor | None = None,
                  device: torch.device | str | None = None, logit_filters: Sequence[LogitFilter] = (),
                  suppress_sos: bool = False) -> list[list[Hypothesis]]:
    """Batched argmax decoding: one hypothesis per input (``beam_size`` and ``nbest`` are not used).

    Inputs that are done are dropped with ``reorder``, so later steps only compute the others. Arguments
    are as for :func:`beam_search`; CTC weighting needs :func:`beam_search` (``beam_size=1`` is fine).

    Returns:
        `B` lists of one :class:`Hypothesis`.
    """
    if options.ctc_weight:
        raise ValueError("greedy_search has no CTC scoring: use beam_search (beam_size=1 is fine)")
    caps = _length_caps(options, batch_size, lengths)
    dev, filters = _device(device, lengths), _filters(options, logit_filters)
    alive = list(range(batch_size))  # original index of each row still decoding
    results: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    sos, eos = (_per_input(i, batch_size, n, dev) for i, n in ((sos_id, "sos_id"), (eos_id, "eos_id")))
    last = sos.clone()
    history = torch.empty((batch_size, 0), dtype=torch.long, device=dev)
    att = torch.zeros(batch_size, device=dev)
    while alive:  # every input is done by its cap at the latest
        scores, state = step(last, state)
        rows = torch.tensor(alive, dtype=torch.long, device=dev)  # (A,) the input of each row
        row_sos = sos[rows] if suppress_sos else None
        best_lp, last = _log_probs(scores, options.temperature, filters, history, row_sos).max(dim=-1)  # (A,)
        att, history = att + best_lp, torch.cat([history, last[:, None]], dim=1)  # (A,), (A, t + 1)
        ended = (last == eos[rows]).tolist()
        done = [e or history.shape[1] >= caps[b] for e, b in zip(ended, alive, strict=True)]
        if not any(done):
            continue
        for a in (a for a, d in enumerate(done) if d):
            tokens = tuple(history[a, : -1 if ended[a] else None].tolist())
            score = _rank(att[a].item(), len(tokens) + ended[a], options.length_penalty)
            results[alive[a]] = [Hypothesis(tokens, score, att[a].item(), None, ended[a])]
        keep = [a for a, d in enumerate(done) if not d]
        alive = [alive[a] for a in keep]
        if alive:
            index = torch.tensor(keep, dtype=torch.long, device=dev)
            state, last, att, history = reorder(state, index), last[index], att[index], history[index]
    return results


class _Beams(NamedTuple):
    """Running hypotheses of the A inputs still searching (K = G·Kg rows each, row = a·K + g·Kg + k)."""

    inputs: list[int]  # (A,) original index of each live input
    att: Tensor  # (A, G, Kg) summed attention log-probs; -inf marks an empty slot
    ctc: Tensor  # (A, G, Kg) CTC prefix log-probs (zeros without CTC)
    history: Tensor  # (A·K, t) tokens so far


class _Choice(NamedTuple):
    """What one group kept at one step."""

    keep: Tensor  # (A, Kg) flat candidate positions (k·C + c) that continue
    finish: Tensor  # (F, 2) (input, flat candidate position) pairs that end with <eos>


def _select_group(joint: Tensor, ids: Tensor, size: int, eos: Tensor, counts: Tensor | None,
                  penalty: float) -> _Choice:
    """Top 2·Kg candidates of one group: <eos> ones ranked within Kg finish, the first Kg others continue.

    Each hypothesis has one <eos> candidate, so 2·Kg candidates always hold Kg that continue.

    Args:
        joint: `(A, Kg·C)` joint scores of the group's candidates; ids: `(A, Kg·C)` their tokens.
        size: Kg, the group's beam.
        eos: `(A,)` each input's end token.
        counts: `(A, V)` how often earlier groups chose each token at this step (updated here), or None.
        penalty: the diversity penalty per count.
    """
    ranked = joint - penalty * counts.gather(1, ids) if counts is not None else joint
    top = ranked.topk(min(2 * size, ids.shape[1]), dim=1).indices  # (A, 2Kg) in rank order
    ranks = torch.arange(top.shape[1], device=top.device)
    is_eos = ids.gather(1, top) == eos[:, None]
    finishing = is_eos & (ranks < size) & torch.isfinite(joint.gather(1, top))  # (A, 2Kg)
    order = (is_eos.long() * top.shape[1] + ranks).argsort(dim=1)[:, :size]  # non-eos first, by rank
    keep = top.gather(1, order)  # (A, Kg)
    if counts is not None:
        chosen = torch.cat([ids.gather(1, keep), eos[:, None].expand_as(top)], dim=1)
        weight = torch.cat([torch.isfinite(joint.gather(1, keep)), finishing], dim=1)
        counts.scatter_add_(1, chosen, weight.to(counts.dtype))
    rows, columns = finishing.nonzero(as_tuple=True)
    return _Choice(keep, torch.stack([rows, top[rows, columns]], dim=1))


def _group_done(pool: list[Hypothesis], best: float, size: int, next_length: int, cap: int,
                options: DecodingOptions) -> bool:
    """True when no running hypothesis of a group can still enter its full pool of finished ones.

    Joint scores never increase as a hypothesis grows (every term is a log-probability), and a future
    hypothesis has a length in [next_length, cap], so ``best / length**alpha`` is bounded by its value at
    one of the two ends; ``stop_bound="current"`` uses next_length alone (a heuristic when alpha > 0).
    """
    if best == -math.inf:
        return True
    if len(pool) < size:
        return False
    alpha = options.length_penalty
    bound = _rank(best, next_length, alpha)
    if options.stop_bound == "cap":
        bound = max(bound, _rank(best, cap, alpha))
    return bound <= pool[-1].score


def _add(pool: list[Hypothesis], hypothesis: Hypothesis, size: int) -> None:
    """Keep the ``size`` best finished hypotheses of a group, best first."""
    pool.append(hypothesis)
    pool.sort(key=lambda h: h.score, reverse=True)
    del pool[size:]


class _Candidates(NamedTuple):
    """Every extension of every running hypothesis, as `(A, G, Kg·C)` tensors (C tokens per hypothesis)."""

    ids: Tensor  # token ids
    att: Tensor  # summed attention log-probs
    ctc: Tensor  # CTC prefix log-probs (zeros without CTC)
    joint: Tensor  # (1 - lambda)·att + lambda·ctc


def _candidates(log_probs: Tensor, beams: _Beams, ctc: CTCPrefixScorer | None, ctc_state: CTCState | None,
                options: DecodingOptions) -> _Candidates:
    """Score the extensions of `(N, V)` log-probs; with ``ctc_candidates``, only each row's top-k tokens."""
    n, vocab = log_probs.shape
    shape = (*beams.att.shape[:2], -1)  # (A, G, Kg·C)
    if options.ctc_candidates is not None and ctc is not None and options.ctc_candidates < vocab:
        step_att, ids = log_probs.topk(options.ctc_candidates, dim=1)  # (N, C)
    else:
        step_att, ids = log_probs, torch.arange(vocab, device=log_probs.device).expand(n, vocab)
    att = beams.att.reshape(n, 1) + step_att  # (N, C)
    ctc_scores = ctc.score(ctc_state, ids) if ctc is not None else torch.zeros_like(att)  # (N, C)
    joint = _joint(att, ctc_scores, options.ctc_weight)
    return _Candidates(*(x.reshape(shape) for x in (ids, att, ctc_scores, joint)))


def _finish(choice: _Choice, group: int, cand: _Candidates, beams: _Beams, pools: list,
            options: DecodingOptions, with_ctc: bool) -> None:
    """Move one group's <eos> extensions into the finished pools."""
    if not len(choice.finish):
        return
    num_groups, size = beams.att.shape[1:]
    inputs, positions = choice.finish.unbind(dim=1)
    rows = inputs * num_groups * size + group * size + positions // (cand.ids.shape[2] // size)
    length = beams.history.shape[1] + 1  # the tokens plus <eos>
    for a, tokens, att, ctc in zip(inputs.tolist(), beams.history[rows].tolist(),
                                   cand.att[inputs, group, positions].tolist(),
                                   cand.ctc[inputs, group, positions].tolist(), strict=True):
        score = _rank(_joint(att, ctc, options.ctc_weight), length, options.length_penalty)
        hypothesis = Hypothesis(tuple(tokens), score, att, ctc if with_ctc else None, True)
        _add(pools[beams.inputs[a]][group], hypothesis, size)


def _retire(a: int, beams: _Beams, pools: list, options: DecodingOptions, with_ctc: bool) -> None:
    """Input ``a`` reached its length cap: its running hypotheses join the pools, unfinished."""
    num_groups, size = beams.att.shape[1:]
    rows = beams.history[a * num_groups * size:(a + 1) * num_groups * size].tolist()
    for slot, (tokens, att, ctc) in enumerate(zip(rows, beams.att[a].flatten().tolist(),
                                                  beams.ctc[a].flatten().tolist(), strict=True)):
        joint = _joint(att, ctc, options.ctc_weight)
        if joint > -math.inf:  # skips empty slots and hypotheses CTC rules out
            score = _rank(joint, len(tokens), options.length_penalty)
            hypothesis = Hypothesis(tuple(tokens), score, att, ctc if with_ctc else None, False)
            _add(pools[beams.inputs[a]][slot // size], hypothesis, size)


def _advance(log_probs: Tensor, beams: _Beams, ctc: CTCPrefixScorer | None, ctc_state: CTCState | None,
             pools: list, caps: list[int], options: DecodingOptions, eos: Tensor) -> tuple[_Beams, Tensor]:
    """One search step: extend, finish, prune, retire capped inputs and drop inputs that are done
    (``eos`` `(A,)`: the end token of each input still searching, in ``beams.inputs`` order).

    Returns:
        The running hypotheses of the inputs still searching, and `(A'·K,)` the row of the previous
        step each of them extends (what ``reorder`` must select).
    """
    num_inputs, num_groups, size = beams.att.shape
    cand = _candidates(log_probs, beams, ctc, ctc_state, options)
    penalty = options.diversity_penalty if num_groups > 1 else 0.0
    counts = log_probs.new_zeros(num_inputs, log_probs.shape[1]) if penalty else None
    keep = []
    for group in range(num_groups):
        choice = _select_group(cand.joint[:, group], cand.ids[:, group], size, eos, counts, penalty)
        _finish(choice, group, cand, beams, pools, options, ctc is not None)
        keep.append(choice.keep)
    keep = torch.stack(keep, dim=1)  # (A, G, Kg) flat positions k·C + c
    groups = torch.arange(num_groups, device=keep.device)[None, :, None]
    rows = (torch.arange(num_inputs, device=keep.device)[:, None, None] * num_groups * size + groups * size
            + keep // (cand.ids.shape[2] // size)).flatten()  # (A·K,)
    history = torch.cat([beams.history[rows], cand.ids.gather(2, keep).reshape(-1, 1)], dim=1)  # (A·K, t+1)
    beams = _Beams(beams.inputs, cand.att.gather(2, keep), cand.ctc.gather(2, keep), history)
    best = _joint(beams.att, beams.ctc, options.ctc_weight).amax(dim=2).tolist()  # (A, G)
    length = history.shape[1]
    alive = []
    for a, b in enumerate(beams.inputs):
        if length >= caps[b]:
            _retire(a, beams, pools, options, ctc is not None)
        elif not all(_group_done(pools[b][g], best[a][g], size, length + 1, caps[b], options)
                     for g in range(num_groups)):
            alive.append(a)
    if len(alive) < num_inputs:  # drop finished inputs, so later steps only compute live rows
        kept = torch.tensor(alive, dtype=torch.long, device=keep.device)
        kept_rows = (kept[:, None] * num_groups * size + torch.arange(num_groups * size, device=keep.device)
                     ).flatten()  # (A'·K,)
        rows, beams = rows[kept_rows], _Beams([beams.inputs[a] for a in alive], beams.att[kept],
                                              beams.ctc[kept], history[kept_rows])
    return beams, rows


def _results(pools: list, nbest: int) -> list[list[Hypothesis]]:
    """Merge the groups' pools per input, best first, without repeated token sequences."""
    results = []
    for groups in pools:
        merged = sorted((h for pool in groups for h in pool), key=lambda h: h.score, reverse=True)
        seen: set[tuple[int, ...]] = set()
        unique = [h for h in merged if not (h.tokens in seen or seen.add(h.tokens))]
        results.append(unique[:nbest])
    return results


def _check_ctc(options: DecodingOptions, ctc: CTCPrefixScorer | None, batch_size: int, eos: Tensor) -> None:
    if options.ctc_weight > 0 and ctc is None:
        raise ValueError("ctc_weight > 0 needs a CTCPrefixScorer (ctc=...)")
    if ctc is not None and (ctc.batch_size != batch_size or bool((eos != ctc.eos).any())):
        raise ValueError(f"the CTCPrefixScorer was built for {ctc.batch_size} inputs and eos={ctc.eos}, "
                         f"not {batch_size} inputs and eos={sorted(set(eos.tolist()))}")


@torch.no_grad()
def beam_search(step: StepFn, state: Any, reorder: ReorderFn, *, batch_size: int,
                sos_id: int | Sequence[int], eos_id: int | Sequence[int],
                options: DecodingOptions = _DEFAULTS, lengths: Tensor | None = None,
                ctc: CTCPrefixScorer | None = None, device: torch.device | str | None = None,
                logit_filters: Sequence[LogitFilter] = (), suppress_sos: bool = False
                ) -> list[list[Hypothesis]]:
    """Batched beam search, optionally diverse (groups) and jointly scored with CTC.

    Per input and group, each step keeps the top 2·Kg extensions by joint score (minus the diversity
    penalty in diverse search); an <eos> extension ranked within Kg joins the group's pool of finished
    hypotheses (the best Kg are kept), and the first Kg others continue. An input is done when every
    group's pool is full and no running hypothesis can still beat its worst member
    (:func:`_group_done`), or at its length cap, where running hypotheses are kept as unfinished.
    The length penalty only ranks finished hypotheses; the running beam is pruned on raw joint scores.

    Args:
        step: the model's step function (module docstring).
        state: the model state for ``batch_size`` inputs, one row each.
        reorder: selects rows of the model state (module docstring).
        batch_size: B, the number of inputs.
        sos_id: the token fed first (the start token of the decoding direction), or B of them.
        eos_id: the token that ends a hypothesis, or B of them (one per input).
        options: search settings.
        lengths: `(B,)` encoder lengths; needed by ``max_length_ratio``.
        ctc: CTC prefix scores of the same inputs; required when ``ctc_weight > 0``. With
            ``ctc_weight == 0`` they are reported in ``log_prob_ctc`` but do not steer the search.
        device: where token tensors live (default: that of ``lengths``, else the CPU).
        logit_filters: extra filters, applied after ``options.suppress_tokens``.
        suppress_sos: never emit an input's own ``sos_id`` (as ``suppress_tokens`` does, but per input).

    Returns:
        `B` lists of up to ``nbest`` hypotheses, best first (diverse search drops repeated sequences).
    """
    dev, filters = _device(device, lengths), _filters(options, logit_filters)
    sos, eos = (_per_input(i, batch_size, n, dev) for i, n in ((sos_id, "sos_id"), (eos_id, "eos_id")))
    _check_ctc(options, ctc, batch_size, eos)
    caps = _length_caps(options, batch_size, lengths)
    num_groups, size = options.num_groups, options.beam_size // options.num_groups
    pools = [[[] for _ in range(num_groups)] for _ in range(batch_size)]
    index = torch.arange(batch_size, device=dev).repeat_interleave(options.beam_size)  # (B·K,)
    state = reorder(state, index)
    ctc_state = ctc.reorder(ctc.initial_state(), index) if ctc is not None else None
    att = torch.full((batch_size, num_groups, size), -math.inf, device=dev)
    att[:, :, 0] = 0.0  # each group starts from one empty hypothesis, not Kg copies of it
    beams = _Beams(list(range(batch_size)), att, torch.zeros_like(att),
                   torch.empty((batch_size * options.beam_size, 0), dtype=torch.long, device=dev))
    last = sos.repeat_interleave(options.beam_size)  # (B·K,)
    while beams.inputs:  # every input is done by its cap at the latest
        scores, state = step(last, state)
        live = torch.tensor(beams.inputs, dtype=torch.long, device=dev)  # (A,) the inputs still searching
        row_sos = sos[live].repeat_interleave(options.beam_size) if suppress_sos else None  # (A·K,)
        log_probs = _log_probs(scores, options.temperature, filters, beams.history, row_sos)
        beams, index = _advance(log_probs, beams, ctc, ctc_state, pools, caps, options, eos[live])
        if not beams.inputs:
            break
        state, last = reorder(state, index), beams.history[:, -1]
        if ctc is not None:
            ctc_state = ctc.extend(ctc.reorder(ctc_state, index), last)
    return _results(pools, options.nbest)


def search(step: StepFn, state: Any, reorder: ReorderFn, *, batch_size: int,
           sos_id: int | Sequence[int], eos_id: int | Sequence[int],
           options: DecodingOptions = _DEFAULTS, lengths: Tensor | None = None,
           ctc: CTCPrefixScorer | None = None, device: torch.device | str | None = None,
           logit_filters: Sequence[LogitFilter] = (), suppress_sos: bool = False) -> list[list[Hypothesis]]:
    """:func:`greedy_search` when it gives the same result (beam 1, no CTC), else :func:`beam_search`."""
    common = {"batch_size": batch_size, "sos_id": sos_id, "eos_id": eos_id, "options": options,
              "lengths": lengths, "device": device, "logit_filters": logit_filters,
              "suppress_sos": suppress_sos}
    if options.beam_size == 1 and ctc is None:
        return greedy_search(step, state, reorder, **common)
    return beam_search(step, state, reorder, ctc=ctc, **common)
