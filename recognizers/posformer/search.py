"""PosFormer decoding: bidirectional beam search with reverse rescoring (posformer.md §6).

This is BTTR's "approximate joint search" (Zhao et al., "Handwritten Mathematical Expression Recognition
with Bidirectionally Trained Transformer", ICDAR 2021), as used by CoMER and PosFormer (reference
implementation SJTU-DeepVisionLab/PosFormer; implemented from the spec, not copied):

1. encode each image once (:func:`encode_images`);
2. beam search left to right (start ``<sos>``, stop ``<eos>``) and right to left (start ``<eos>``, stop
   ``<sos>``, as ``PosFormer.start_token``/``stop_token`` say) with ``recognizers.decoding``; r2l
   hypotheses are reversed into natural order. Both searches run as one batch of 2B inputs with a start
   and stop token per input (:func:`both_directions`): the decoder steps once per step for both, which
   costs about 1.5x one direction's step instead of 2x, and gives each input the hypotheses its own
   :func:`directional_search` gives;
3. pool the hypotheses of both directions per image (a sequence found by both counts once);
4. score every pooled sequence in *both* directions, teacher-forcing it through the decoder
   (:func:`sequence_scores`) unless that direction's search finished it; a direction's score is
   ``Σ log p(out) / (n + 1)^α``: the stop token's log-probability is included, and ``n + 1`` is the
   non-pad length of ``tgt = [start, y...]`` (the start token counts, the stop token does not),
   α = ``options.length_penalty`` = 1.0 by default;
5. final score = l2r score + r2l score; hypotheses are ranked by it, best first.

Deliberate deviations, none of which changes the result for a hypothesis that ended with its stop token:

* the reference takes a hypothesis's own-direction score from the search and only rescores the opposite
  direction. Here so does a hypothesis its direction *finished*: its search score is the teacher-forced
  one (``recognizers.decoding`` ranks finished hypotheses by ``Σ log p / (n + 1)^α``, stop token
  included, and its filters do not renormalise), so it is not computed twice. Every other
  (sequence, direction) pair is teacher-forced, including a hypothesis cut at the length cap, which is
  scored as if it ended there (its stop token's log-probability is added), like its reverse score
  already is in the reference. A sequence found in both directions thus gets one well-defined score.
* the direction's start token and ``<pad>`` are suppressed during search (the reference does not; a
  trained model gives them no probability), so outputs never contain special tokens (§13 B3).
* beam 1 is plain greedy decoding in each direction (``decoding.search``), then the same rescoring.

Batching: :func:`encode_images` runs the DenseNet on groups of images of identical size only and pads
the *features*, because the encoder does not mask batch padding (see ``encoder.py``) while the decoder
does; results therefore do not depend on how images are batched, and match the reference's test
protocol (batch 1).

Legend: B images, K beam size, N scored sequences, L steps, h×w feature cells, d width, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .. import decoding
from .decoder import DecoderState
from .model import PosFormer

__all__ = [
    "DIRECTIONS",
    "RESCORE_CELLS",
    "RescoredHypothesis",
    "bidirectional_search",
    "both_directions",
    "directional_search",
    "encode_images",
    "search_options",
    "sequence_scores",
]

DIRECTIONS = ("l2r", "r2l")
# Teacher-forced rescoring works on chunks of at most this many (row · step · feature cell) entries: the
# ARM's coverage input is `(N, 2H, L, h·w)` per layer, so this bounds it at about 1 GiB in float32 with
# the reference's 2H = 16 channels.
RESCORE_CELLS = 2**24


@dataclass(frozen=True)
class RescoredHypothesis:
    """One candidate of the bidirectional search, in natural (left-to-right) order."""

    tokens: tuple[int, ...]  # token ids without <sos>/<eos>, left to right
    score: float  # l2r_score + r2l_score, what the candidates are ranked by
    l2r_score: float  # teacher-forced l2r: Σ log p (stop included) / (len(tokens) + 1)**alpha
    r2l_score: float  # the same through the r2l decoder on the reversed sequence
    found_by: tuple[str, ...]  # the searches that produced it: ("l2r",), ("r2l",) or both


def search_options(beam_size: int = 10, nbest: int = 1, *, num_groups: int = 1,
                   diversity_penalty: float = 0.0, max_length: int = 200) -> decoding.DecodingOptions:
    """The reference's search settings (§6): α = 1.0, stop when the best running hypothesis, normalised at
    its current length, cannot beat the worst finished one (HF ``early_stopping=False``).

    Args:
        beam_size: K per direction (reference 10).
        nbest: candidates returned per image, at most ``beam_size``.
        num_groups, diversity_penalty: diverse beam search in each direction (1 and 0: plain beam search).
        max_length: most output tokens (reference 200; capped by the model's positional table).
    """
    return decoding.DecodingOptions(beam_size=beam_size, nbest=nbest, max_length=max_length,
                                    length_penalty=1.0, stop_bound="current", num_groups=num_groups,
                                    diversity_penalty=diversity_penalty)


def _reorder(state: DecoderState, index: Tensor) -> DecoderState:
    return state.index_select(index)


def _fit_to_model(model: PosFormer, options: decoding.DecodingOptions) -> decoding.DecodingOptions:
    """Cap ``max_length`` so that ``[start, y...]`` fits the decoder's positional table."""
    if options.max_length is None or options.max_length_ratio is not None:
        raise ValueError("PosFormer search needs max_length and no max_length_ratio (images have no length)")
    longest = model.cfg.decoder.max_len - 1
    return options if options.max_length <= longest else replace(options, max_length=longest)


def encode_images(model: PosFormer, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Encode images without batch padding in the DenseNet, then pad the features.

    Args:
        model: the network (in eval mode for reproducible results).
        images: B tensors `(1, H_b, W_b)` in [0, 1], white on black, on the model's device.

    Returns:
        memory `(B, h, w, d)` (zeros on padding) and memory_mask `(B, h, w)` (True on padding), with
        h, w the largest feature sizes of the batch.
    """
    if not images:
        raise ValueError("encode_images needs at least one image")
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != 1:
            raise ValueError(f"image {b}: expected (1, H, W), got {tuple(image.shape)}")
        groups.setdefault(tuple(image.shape), []).append(b)
    encoded = {}
    for shape, members in groups.items():
        pixels = torch.stack([images[b] for b in members])  # (G, 1, H, W)
        masks = torch.zeros(len(members), *shape[1:], dtype=torch.bool, device=pixels.device)  # (G, H, W)
        encoded[shape] = model.encode(pixels, masks)
    first = next(iter(encoded.values()))[0]
    height = max(m.shape[1] for m, _ in encoded.values())
    width = max(m.shape[2] for m, _ in encoded.values())
    memory = first.new_zeros(len(images), height, width, first.shape[-1])  # (B, h, w, d)
    mask = torch.ones(len(images), height, width, dtype=torch.bool, device=first.device)  # (B, h, w)
    for shape, members in groups.items():
        features, valid = encoded[shape]  # (G, h_g, w_g, d), (G, h_g, w_g)
        index = torch.tensor(members, device=first.device)
        memory[index, : features.shape[1], : features.shape[2]] = features
        mask[index, : valid.shape[1], : valid.shape[2]] = valid
    return memory, mask


@torch.no_grad()
def directional_search(model: PosFormer, memory: Tensor, memory_mask: Tensor, direction: str,
                       options: decoding.DecodingOptions) -> list[list[decoding.Hypothesis]]:
    """Beam search in one direction; hypotheses come back in natural (left-to-right) token order.

    Args:
        model: the network.
        memory: `(B, h, w, d)` from :func:`encode_images`; memory_mask `(B, h, w)`.
        direction: ``"l2r"`` or ``"r2l"``.
        options: search settings (``search_options``); beam 1 is greedy decoding.

    Returns:
        `B` lists of up to ``options.nbest`` hypotheses, best first by their search score.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return _search(model, memory, memory_mask, (direction,), options)[direction]


@torch.no_grad()
def both_directions(model: PosFormer, memory: Tensor, memory_mask: Tensor, options: decoding.DecodingOptions
                    ) -> dict[str, list[list[decoding.Hypothesis]]]:
    """:func:`directional_search` in both directions at once, as one search over 2B inputs (input b is
    image b left to right, input B + b the same image right to left); the search is per input, so each
    direction gets the hypotheses of its own search (to float rounding of the batched decoder).

    Args:
        model, memory `(B, h, w, d)`, memory_mask `(B, h, w)`, options: as for :func:`directional_search`.

    Returns:
        ``{"l2r": ..., "r2l": ...}``, each `B` lists of up to ``options.nbest`` hypotheses in natural order.
    """
    return _search(model, memory, memory_mask, DIRECTIONS, options)


def _search(model: PosFormer, memory: Tensor, memory_mask: Tensor, directions: tuple[str, ...],
            options: decoding.DecodingOptions) -> dict[str, list[list[decoding.Hypothesis]]]:
    """One search over ``len(directions)`` · B inputs, each with its direction's start and stop token; the
    direction's start token and ``<pad>`` are never emitted."""
    b = memory.shape[0]
    suppress = tuple(dict.fromkeys((*options.suppress_tokens, model.cfg.pad_id)))  # + each input's start
    options = replace(_fit_to_model(model, options), suppress_tokens=suppress)
    state = model.init_state(memory, memory_mask, directions[0])
    if len(directions) > 1:
        rows = torch.arange(b, device=memory.device).repeat(len(directions))  # the image of each input
        state = replace(state.index_select(rows), direction="both")
    starts = [model.start_token(d) for d in directions for _ in range(b)]
    stops = [model.stop_token(d) for d in directions for _ in range(b)]
    results = decoding.search(model.step, state, _reorder, batch_size=len(directions) * b, sos_id=starts,
                              eos_id=stops, options=options, device=memory.device, suppress_sos=True)
    found = {}
    for k, direction in enumerate(directions):
        part = results[k * b:(k + 1) * b]
        if direction == "r2l":  # back into natural order
            part = [[replace(h, tokens=h.tokens[::-1]) for h in hyps] for hyps in part]
        found[direction] = part
    return found


def _chunks(lengths: list[int], cells: int, budget: int) -> list[list[int]]:
    """Row indices sorted by length, cut so that rows · (longest + 1) · cells stays within budget."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunks: list[list[int]] = []
    for i in order:  # ascending, so lengths[i] is the longest of the chunk it joins
        if chunks and (len(chunks[-1]) + 1) * (lengths[i] + 1) * cells <= budget:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


@torch.no_grad()
def sequence_scores(model: PosFormer, memory: Tensor, memory_mask: Tensor, image_index: Sequence[int],
                    sequences: Sequence[Sequence[int]], direction: str, alpha: float = 1.0, *,
                    budget: int = RESCORE_CELLS) -> Tensor:
    """Teacher-forced, length-normalised log-probabilities of token sequences in one direction.

    Sequence ``y`` (natural order, no specials) is fed as ``tgt = [start, y...]`` with
    ``out = [y..., stop]`` (r2l: ``y`` reversed, start ``<eos>``, stop ``<sos>``), and scored
    ``Σ_t log p(out_t | tgt_≤t) / (len(y) + 1)**alpha``.

    Args:
        model: the network.
        memory: `(B, h, w, d)`; memory_mask `(B, h, w)`.
        image_index: `(N,)` the image of each sequence.
        sequences: N token sequences.
        direction: ``"l2r"`` or ``"r2l"``.
        alpha: the length-normalisation exponent.
        budget: most (row · step · feature cell) entries per forward pass (:data:`RESCORE_CELLS`).

    Returns:
        `(N,)` float64 scores on the CPU (computed in the model's precision, at least float32).
    """
    if len(image_index) != len(sequences):
        raise ValueError(f"{len(image_index)} image indices for {len(sequences)} sequences")
    start, stop, pad = model.start_token(direction), model.stop_token(direction), model.cfg.pad_id
    scores = torch.empty(len(sequences), dtype=torch.float64)
    cells = memory.shape[1] * memory.shape[2]
    for chunk in _chunks([len(s) for s in sequences], cells, budget):
        rows = [list(sequences[i]) if direction == "l2r" else list(sequences[i])[::-1] for i in chunk]
        steps = max(len(r) for r in rows) + 1
        tgt = torch.full((len(rows), steps), pad, dtype=torch.long)  # (n, L)
        out = torch.full((len(rows), steps), pad, dtype=torch.long)  # (n, L)
        for k, row in enumerate(rows):
            tgt[k, : len(row) + 1] = torch.tensor([start, *row])
            out[k, : len(row) + 1] = torch.tensor([*row, stop])
        valid = torch.arange(steps)[None, :] <= torch.tensor([len(r) for r in rows])[:, None]  # (n, L)
        index = torch.tensor([image_index[i] for i in chunk], device=memory.device)
        logits = model.score(memory[index], memory_mask[index], tgt.to(memory.device))  # (n, L, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision: upcast
        picked = logits.log_softmax(-1).gather(2, out.to(memory.device)[..., None])[..., 0].cpu().double()
        total = picked.masked_fill(~valid, 0.0).sum(1)  # (n,)
        lengths = valid.sum(1).float()  # (n,) len(y) + 1
        scores[torch.tensor(chunk)] = total / lengths**alpha if alpha else total
    return scores


def _direction_scores(model: PosFormer, memory: Tensor, memory_mask: Tensor, image_index: list[int],
                      found: list[dict[str, decoding.Hypothesis]], direction: str,
                      options: decoding.DecodingOptions, budget: int) -> list[float]:
    """The ``direction`` score of each pooled sequence (``found``: the hypotheses that found it, by
    direction). A sequence this direction's own search finished is not teacher-forced again: its searched
    log-probability, stop token included, over ``(n + 1)^α`` is that score (suppression filters do not
    renormalise; with a temperature other than 1 everything is teacher-forced). Halves the rescoring."""
    alpha = options.length_penalty
    reuse = options.temperature == 1.0
    scores: list[float | None] = []
    for by in found:
        hyp = by.get(direction)
        if reuse and hyp is not None and hyp.finished:
            length = len(hyp.tokens) + 1
            scores.append(hyp.log_prob_att / length**alpha if alpha else hyp.log_prob_att)
        else:
            scores.append(None)
    todo = [i for i, score in enumerate(scores) if score is None]
    if todo:
        sequences = [next(iter(found[i].values())).tokens for i in todo]
        forced = sequence_scores(model, memory, memory_mask, [image_index[i] for i in todo], sequences,
                                 direction, alpha, budget=budget).tolist()
        for i, score in zip(todo, forced, strict=True):
            scores[i] = score
    return scores


@torch.no_grad()
def bidirectional_search(model: PosFormer, memory: Tensor, memory_mask: Tensor,
                         options: decoding.DecodingOptions | None = None, *,
                         budget: int = RESCORE_CELLS) -> list[list[RescoredHypothesis]]:
    """BTTR's approximate joint search (module docstring): both directions, pooled, rescored both ways.

    Args:
        model: the network (eval mode: dropout would make the scores random).
        memory: `(B, h, w, d)` from :func:`encode_images`; memory_mask `(B, h, w)`.
        options: :func:`search_options` (the default); each direction keeps ``beam_size`` finished
            hypotheses, and ``nbest`` of the pooled, rescored candidates are returned.
        budget: rescoring chunk size (:func:`sequence_scores`).

    Returns:
        `B` lists of up to ``options.nbest`` distinct hypotheses, best first by l2r + r2l score.
    """
    options = _fit_to_model(model, options or search_options())
    per_direction = replace(options, nbest=options.beam_size)
    pools: list[dict[tuple[int, ...], dict[str, decoding.Hypothesis]]] = [{} for _ in range(memory.shape[0])]
    searched = both_directions(model, memory, memory_mask, per_direction)
    for direction in DIRECTIONS:
        for pool, hyps in zip(pools, searched[direction], strict=True):
            for hyp in hyps:
                pool.setdefault(hyp.tokens, {}).setdefault(direction, hyp)
    image_index = [b for b, pool in enumerate(pools) for _ in pool]
    found = [pool[tokens] for pool in pools for tokens in pool]
    l2r, r2l = (_direction_scores(model, memory, memory_mask, image_index, found, d, options, budget)
                for d in DIRECTIONS)
    results: list[list[RescoredHypothesis]] = [[] for _ in pools]
    for b, by, forward, backward in zip(image_index, found, l2r, r2l, strict=True):
        tokens = next(iter(by.values())).tokens
        results[b].append(RescoredHypothesis(tokens, forward + backward, forward, backward, tuple(by)))
    for hyps in results:
        hyps.sort(key=lambda h: -h.score if math.isfinite(h.score) else math.inf)
        del hyps[options.nbest:]
    return results
