"""PosFormer's decoders (posformer.md §3.2–§3.4): a post-norm transformer stack whose cross-attention in
layers 2.. is refined by one shared ARM with IAC, under a word head (training and inference) and under a
position head (training only).

The stack runs two ways that give the same numbers (§6 item 6):

* teacher-forced (``forward``): all L steps at once, with a causal + padding mask and the coverage as an
  exclusive cumulative sum over time;
* step by step (``step``): one token per call; each layer appends one entry to its self-attention
  :class:`~recognizers.layers.KVCache`, attends the memory keys/values projected once in ``init_state``,
  and keeps the coverage as a running sum, so the ARM convolution runs on the current step only and the
  work per step is O(L) instead of the reference's full O(L²) recomputation.

Legend: N rows (2B in bidirectional training, beam rows when decoding), L steps, d width, H heads,
h×w feature cells, S = h·w, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers import KVCache, PositionalEncoding1d, PostNormDecoderLayer, reindex_sources
from .arm import AttentionRefinement, CoverageState, coverage_input, exclusive_cumsum, iac_keep
from .config import DecoderConfig, PositionConfig

__all__ = ["DecoderLayer", "DecoderStack", "DecoderState", "LayerCache", "PositionDecoder", "WordDecoder"]


@dataclass(frozen=True)
class LayerCache:
    """Incremental state of one decoder layer.

    Attributes:
        self_kv: keys/values of every token so far, `(N, H, t, d/H)`; one entry more per step.
        memory_kv: the memory's keys/values for the cross-attention, `(N, H, S, d/H)`; fixed.
        coverage: the running ARM coverage (refined layers only), else None.
    """

    self_kv: KVCache
    memory_kv: KVCache
    coverage: CoverageState | None

    def index_select(self, index: Tensor, same_memory: bool = False) -> LayerCache:
        """Select or duplicate rows. Args: index `(N',)` long; ``same_memory``: every new row has the
        memory its old row had (:func:`~recognizers.layers.reindex_sources`), so it is kept as it is."""
        coverage = None if self.coverage is None else self.coverage.index_select(index)
        memory_kv = self.memory_kv if same_memory else self.memory_kv.index_select(index)
        return LayerCache(self.self_kv.index_select(index), memory_kv, coverage)


@dataclass(frozen=True)
class DecoderState:
    """Everything step-by-step decoding carries, one row per hypothesis.

    Attributes:
        layers: one :class:`LayerCache` per decoder layer.
        memory_mask: `(N, h, w)` bool, True on padded feature cells.
        length: tokens consumed so far (the position of the next one).
        direction: ``"l2r"``, ``"r2l"`` or ``"both"`` (rows of both directions, ``search.both_directions``);
            IAC uses the same Ω in both, so it is informational.
        source: `(N,)` long, the image of each row (None: unknown, the memory is gathered at every
            reorder).
    """

    layers: tuple[LayerCache, ...]
    memory_mask: Tensor
    length: int
    direction: str
    source: Tensor | None = None

    def index_select(self, index: Tensor) -> DecoderState:
        """Select or duplicate hypotheses (beam search). Args: index `(N',)` long."""
        source, same = (None, False) if self.source is None else reindex_sources(self.source, index)
        mask = self.memory_mask if same else self.memory_mask.index_select(0, index)
        return DecoderState(tuple(layer.index_select(index, same) for layer in self.layers), mask,
                            self.length, self.direction, source)


class DecoderLayer(PostNormDecoderLayer):
    """Post-norm transformer decoder layer (as torch's ``TransformerDecoderLayer``, ReLU) whose
    cross-attention can be finished from refined logits, so the stack can change them between the
    logits and the softmax."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__(cfg.d_model, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, activation="relu")

    def cross_block_from_logits(self, x: Tensor, logits: Tensor, memory: KVCache, bias: Tensor | None
                                ) -> tuple[Tensor, Tensor]:
        """Finish the cross-attention from its logits `(N, H, Lq, S)` and optional ``bias`` (−R).
        Returns `(N, Lq, d)` and the final attention `(N, H, Lq, S)`."""
        out, probs = self.cross_attn.attend(logits, memory, bias)
        return self.norm2(x + self.dropout(out)), probs


class DecoderStack(nn.Module):
    """``num_layers`` decoder layers and the ARM shared by layers 2.. (layer 1 is not refined).

    Args:
        cfg: the decoder configuration.
        iac_ids: Ω, ids of the input tokens whose attention IAC keeps out of the coverage.
        pad_id: the padding id of ``tgt`` (key-padding mask).
    """

    def __init__(self, cfg: DecoderConfig, iac_ids: tuple[int, ...], pad_id: int) -> None:
        super().__init__()
        self.cfg, self.pad_id = cfg, pad_id
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.arm = AttentionRefinement(cfg) if cfg.arm.enabled else None
        self.register_buffer("iac_ids", torch.tensor(iac_ids, dtype=torch.long), persistent=False)

    def _refines(self, i: int) -> bool:
        return self.arm is not None and i > 0

    def _coverage_input(self, p_prev: Tensor, p_cur: Tensor) -> Tensor:
        return coverage_input(p_prev, p_cur, self.cfg.arm.cross_coverage, self.cfg.arm.self_coverage)

    def coverage_keep(self, tgt: Tensor) -> Tensor:
        """IAC mask m of a teacher-forced batch: `(N, L)` tgt → `(N, L)` float, 0 where step t's attention
        is kept out of the coverage. Input alignment keys on ``tgt[t]``; output alignment on
        ``tgt[t+1]``, and its last row, which feeds no later step, is 1."""
        keep = iac_keep(tgt, self.iac_ids)
        if self.cfg.arm.iac_alignment == "output":
            keep = torch.cat([keep[:, 1:], torch.ones_like(keep[:, :1])], dim=1)
        return keep

    def forward(self, x: Tensor, tgt: Tensor, memory: Tensor, memory_mask: Tensor,
                attention: list[Tensor] | None = None) -> Tensor:
        """Teacher-forced pass.

        Args:
            x: `(N, L, d)` embedded inputs.
            tgt: `(N, L)` input token ids (padding and IAC masks).
            memory: `(N, h, w, d)` encoder features; memory_mask `(N, h, w)` True on padding.
            attention: if a list, each layer's cross-attention weights `(N, H, L, S)` (after the ARM
                correction, S = h·w) are appended to it, for attention views.

        Returns:
            `(N, L, d)` hidden states (no final norm, as in the reference).
        """
        length = tgt.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tgt.device).triu(1)
        self_mask = causal | (tgt == self.pad_id)[:, None, None, :]  # (N, 1, L, L)
        key_mask = memory_mask.flatten(1)[:, None, None, :]  # (N, 1, 1, S)
        memory = memory.flatten(1, 2)  # (N, S, d)
        keep = self.coverage_keep(tgt).to(x.dtype)[:, None, :, None]  # (N, 1, L, 1)
        p_prev = None
        for i, layer in enumerate(self.layers):
            x = layer.self_block(x, layer.self_attn.project_kv(x), self_mask)
            memory_kv = layer.cross_attn.project_kv(memory)
            logits = layer.cross_attn.logits(x, memory_kv, key_mask)  # (N, H, L, S)
            bias = None
            if self._refines(i):
                a = self._coverage_input(p_prev, layer.cross_attn.probabilities(logits))  # (N, C, L, S)
                bias = -self.arm(exclusive_cumsum(a * keep), memory_mask)
            x, p_prev = layer.cross_block_from_logits(x, logits, memory_kv, bias)
            if attention is not None:
                attention.append(p_prev)
            x = layer.ff_block(x)
        return x

    def init_layers(self, memory: Tensor) -> tuple[LayerCache, ...]:
        """Empty caches for `(N, h, w, d)` memory: its keys/values projected once per layer."""
        n, h, w, d = memory.shape
        heads = self.cfg.num_heads
        empty = memory.new_zeros(n, heads, 0, d // heads)
        total = memory.new_zeros(n, self.cfg.coverage_inputs, h * w)
        return tuple(LayerCache(KVCache(empty, empty), layer.cross_attn.project_kv(memory.flatten(1, 2)),
                                CoverageState(total) if self._refines(i) else None)
                     for i, layer in enumerate(self.layers))

    def step(self, x: Tensor, tokens: Tensor, layers: tuple[LayerCache, ...], memory_mask: Tensor
             ) -> tuple[Tensor, tuple[LayerCache, ...]]:
        """One step for every row.

        Args:
            x: `(N, 1, d)` the embedded current input token.
            tokens: `(N,)` its id (IAC mask).
            layers: the caches of the previous steps; memory_mask `(N, h, w)`.

        Returns:
            `(N, 1, d)` hidden state and the caches extended by this step.
        """
        key_mask = memory_mask.flatten(1)[:, None, None, :]  # (N, 1, 1, S)
        keep = iac_keep(tokens, self.iac_ids).to(x.dtype)  # (N,)
        output_aligned = self.cfg.arm.iac_alignment == "output"
        new, p_prev = [], None
        for layer, cache in zip(self.layers, layers, strict=True):
            self_kv = cache.self_kv.append(layer.self_attn.project_kv(x))
            x = layer.self_block(x, self_kv, None)  # every cached token is real: no mask
            logits = layer.cross_attn.logits(x, cache.memory_kv, key_mask)  # (N, H, 1, S)
            bias, coverage = None, cache.coverage
            if coverage is not None:
                a = self._coverage_input(p_prev, layer.cross_attn.probabilities(logits))[:, :, 0]  # (N, C, S)
                coverage = coverage.resolve(keep)  # output alignment: the held-back row keys on this token
                bias = -self.arm(coverage.total[:, :, None], memory_mask)  # (N, H, 1, S)
                coverage = coverage.push(a, None if output_aligned else keep)
            x, p_prev = layer.cross_block_from_logits(x, logits, cache.memory_kv, bias)
            x = layer.ff_block(x)
            new.append(LayerCache(self_kv, cache.memory_kv, coverage))
        return x, tuple(new)


class _InputNorm(nn.Module):
    """Adds the 1-D sinusoidal encoding to embedded inputs, then LayerNorm (§3.2, §3.4)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.pos = PositionalEncoding1d(cfg.d_model, cfg.max_len)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        return self.norm(self.pos(x, offset))


class WordDecoder(nn.Module):
    """Embedding → LN → +PE → LN, the stack, Linear(d, V) (§3.2).

    Args:
        cfg: the decoder configuration.
        vocab_size: V.
        iac_ids: Ω (token ids).
        pad_id: the padding id.
    """

    def __init__(self, cfg: DecoderConfig, vocab_size: int, iac_ids: tuple[int, ...], pad_id: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Embedding(vocab_size, cfg.d_model), nn.LayerNorm(cfg.d_model))
        self.input_norm = _InputNorm(cfg)
        self.stack = DecoderStack(cfg, iac_ids, pad_id)
        self.proj = nn.Linear(cfg.d_model, vocab_size)

    def forward(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor,
                attention: list[Tensor] | None = None) -> Tensor:
        """Args: tgt `(N, L)`, memory `(N, h, w, d)`, memory_mask `(N, h, w)`; ``attention`` collects the
        per-layer cross-attention weights (:meth:`DecoderStack.forward`). Returns logits `(N, L, V)`."""
        x = self.input_norm(self.embed(tgt))  # (N, L, d)
        return self.proj(self.stack(x, tgt, memory, memory_mask, attention))

    def init_state(self, memory: Tensor, memory_mask: Tensor, direction: str) -> DecoderState:
        """State before the first step (whose input is the direction's start token)."""
        if direction not in ("l2r", "r2l"):
            raise ValueError(f"direction must be 'l2r' or 'r2l', got {direction!r}")
        source = torch.arange(memory.shape[0], device=memory.device)
        return DecoderState(self.stack.init_layers(memory), memory_mask.bool(), 0, direction, source)

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Args: tokens `(N,)` each row's last token. Returns logits `(N, V)` and the new state."""
        x = self.input_norm(self.embed(tokens[:, None]), offset=state.length)  # (N, 1, d)
        x, layers = self.stack.step(x, tokens, state.layers, state.memory_mask)
        state = DecoderState(layers, state.memory_mask, state.length + 1, state.direction, state.source)
        return self.proj(x[:, 0]), state


def _head(d: int, hidden: int, classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes))


class PositionDecoder(nn.Module):
    """The training-only position branch (§3.4): the path vectors, not the words, are its input.

    Linear(5, d) → GELU → LN → +PE → LN, its own stack (own ARM + IAC, keyed on the word ids), and two
    heads: nesting level (5 classes) and relative position (6 classes) of the *next* token.

    Args:
        cfg: the decoder configuration (identical to the word decoder's).
        position: sizes of the input vector and the heads.
        iac_ids: Ω (token ids).
        pad_id: the padding id.
    """

    def __init__(self, cfg: DecoderConfig, position: PositionConfig, iac_ids: tuple[int, ...],
                 pad_id: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.embed = nn.Sequential(nn.Linear(position.path_dim, d), nn.GELU(), nn.LayerNorm(d))
        self.input_norm = _InputNorm(cfg)
        self.stack = DecoderStack(cfg, iac_ids, pad_id)
        self.level_head = _head(d, position.head_hidden, position.num_levels)
        self.relpos_head = _head(d, position.head_hidden, position.num_relations)

    def forward(self, pos_vectors: Tensor, tgt: Tensor, memory: Tensor, memory_mask: Tensor
                ) -> tuple[Tensor, Tensor]:
        """Args: pos_vectors `(N, L, 5)`, tgt `(N, L)` word ids, memory `(N, h, w, d)`, memory_mask
        `(N, h, w)`. Returns level logits `(N, L, 5)` and relative-position logits `(N, L, 6)`."""
        x = self.input_norm(self.embed(pos_vectors.to(memory.dtype)))  # (N, L, d)
        x = self.stack(x, tgt, memory, memory_mask)
        return self.level_head(x), self.relpos_head(x)
