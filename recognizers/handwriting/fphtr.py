"""FPHTR's decoder side (writer-htr.md §4.2): the feature map becomes a position-encoded memory that a
post-norm transformer decoder reads character by character.

Singh & Karayev, "Full Page Handwriting Recognition via Image to Sequence Extraction" (ICDAR 2021);
thesis code ``htr/htr/models/fphtr/fphtr.py`` (cross-checked, not copied). The layers are the project's
own (``recognizers.layers``), so the decoder runs two ways that give the same logits in eval mode:

* teacher-forced (:meth:`FPHTRDecoder.features`): all T steps at once, causal + target-padding mask;
* step by step (:meth:`FPHTRDecoder.step`): one token per call, each layer appending one entry to its
  self-attention :class:`~recognizers.layers.KVCache` and reading the memory keys/values projected once in
  :meth:`FPHTRDecoder.init_state`.

Deliberate deviations from the thesis code: padded feature cells are masked out of the cross-attention
(the thesis attends to them), and the 2-D encoding uses absolute cell positions (first d/2 channels:
row y; last d/2: column x), so a word's memory does not depend on the padding around it.

Legend: B images (N rows when decoding), T steps, h×w feature cells, S = h·w, C backbone channels,
d width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers import KVCache, PositionalEncoding1d, PostNormDecoderLayer, reindex_sources, sinusoidal_table
from .config import FPHTRConfig

__all__ = ["FPHTRDecoder", "FPHTRLayer", "FPHTRMemory", "FPHTRState", "positional_encoding_2d"]


def positional_encoding_2d(height: int, width: int, d_model: int,
                           device: torch.device | None = None) -> Tensor:
    """Absolute 2-D sinusoidal encoding `(h, w, d)`: channels [0, d/2) encode the row, [d/2, d) the column."""
    half = d_model // 2
    rows = sinusoidal_table(height, half, device=device)[:, None].expand(height, width, half)  # (h, w, d/2)
    cols = sinusoidal_table(width, half, device=device)[None, :].expand(height, width, half)  # (h, w, d/2)
    return torch.cat([rows, cols], dim=-1)  # (h, w, d)


@dataclass(frozen=True)
class FPHTRMemory:
    """The encoded images.

    Attributes:
        memory: `(B, S, d)` position-encoded, projected features (row-major cells).
        mask: `(B, S)` bool, True on padded cells.
    """

    memory: Tensor
    mask: Tensor

    def index_select(self, index: Tensor) -> FPHTRMemory:
        """Select or duplicate rows. Args: index `(N,)` long."""
        return FPHTRMemory(self.memory.index_select(0, index), self.mask.index_select(0, index))


@dataclass(frozen=True)
class FPHTRState:
    """Step-by-step decoding state, one row per hypothesis.

    Attributes:
        self_kv: per layer, keys/values of every input so far `(N, H, t, d/H)`.
        memory_kv: per layer, the memory's keys/values `(N, H, S, d/H)`; fixed.
        memory_mask: `(N, S)` bool, True on padded cells.
        length: inputs consumed so far (the position of the next one).
        source: `(N,)` long, the image of each row (None: unknown, the memory is gathered at every
            reorder; see :func:`~recognizers.layers.reindex_sources`).
    """

    self_kv: tuple[KVCache, ...]
    memory_kv: tuple[KVCache, ...]
    memory_mask: Tensor
    length: int
    source: Tensor | None = None

    def index_select(self, index: Tensor) -> FPHTRState:
        """Select or duplicate hypotheses (beam search). Args: index `(N',)` long."""
        source, same = (None, False) if self.source is None else reindex_sources(self.source, index)
        memory_kv = self.memory_kv if same else tuple(kv.index_select(index) for kv in self.memory_kv)
        mask = self.memory_mask if same else self.memory_mask.index_select(0, index)
        return FPHTRState(tuple(kv.index_select(index) for kv in self.self_kv), memory_kv, mask, self.length,
                          source)


class FPHTRLayer(PostNormDecoderLayer):
    """Post-norm transformer decoder layer with GELU, as ``nn.TransformerDecoderLayer(activation="gelu")``."""

    def __init__(self, cfg: FPHTRConfig) -> None:
        super().__init__(cfg.d_model, cfg.num_heads, cfg.dim_feedforward, cfg.dropout, activation="gelu")


class FPHTRDecoder(nn.Module):
    """1×1 conv C → d, 2-D encoding, and the transformer decoder with its classifier Linear(d, V).

    Args:
        cfg: decoder sizes.
        in_channels: C, the backbone's output width.
        vocab_size: V.
        max_seq_len: the most decoder inputs (rows of the 1-D sinusoidal table).
        pad_id: the padding id of decoder inputs (key-padding mask).
    """

    def __init__(self, cfg: FPHTRConfig, in_channels: int, vocab_size: int, max_seq_len: int,
                 pad_id: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.cfg, self.pad_id = cfg, pad_id
        self.proj = nn.Conv2d(in_channels, d, 1)
        self.memory_dropout = nn.Dropout(cfg.encoder_dropout)
        self.embed = nn.Embedding(vocab_size, d)
        self.pos = PositionalEncoding1d(d, max_seq_len + 1)
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(FPHTRLayer(cfg) for _ in range(cfg.num_layers))
        self.classifier = nn.Linear(d, vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        """The FPHTR reference's initialisation: U(−0.1, 0.1) embedding and classifier, zero classifier
        bias, Kaiming-normal projection (so the √d-scaled embedding starts at the encoding's scale)."""
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.classifier.weight, -0.1, 0.1)
        nn.init.zeros_(self.classifier.bias)
        nn.init.kaiming_normal_(self.proj.weight, mode="fan_out", nonlinearity="relu")

    def encode(self, feat: Tensor, feat_mask: Tensor) -> FPHTRMemory:
        """Args: feat `(B, C, h, w)`, feat_mask `(B, h, w)` True on padding. Returns the memory."""
        x = self.proj(feat).permute(0, 2, 3, 1)  # (B, h, w, d)
        x = x + positional_encoding_2d(x.shape[1], x.shape[2], x.shape[3], x.device).to(x.dtype)
        return FPHTRMemory(self.memory_dropout(x).flatten(1, 2), feat_mask.flatten(1))  # (B, S, d), (B, S)

    def _embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """`(N, L)` ids → `(N, L, d)`: embedding · √d + 1-D encoding, dropout."""
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        return self.input_dropout(self.pos(x, offset))

    def features(self, memory: FPHTRMemory, tgt: Tensor) -> Tensor:
        """Teacher-forced classifier inputs.

        Args:
            memory: the encoded images (B rows).
            tgt: `(B, T)` decoder inputs ``[<sos>, y_1, ...]``, right-padded with ``pad_id``.

        Returns:
            h `(B, T, d)`: the classifier's input at every step (logits = ``classifier(h)``).
        """
        length = tgt.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tgt.device).triu(1)
        self_mask = causal | (tgt == self.pad_id)[:, None, None, :]  # (B, 1, T, T)
        memory_mask = memory.mask[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(tgt)  # (B, T, d)
        for layer in self.layers:
            x = layer(x, layer.self_attn.project_kv(x), self_mask, layer.cross_attn.project_kv(memory.memory),
                      memory_mask)
        return x

    def init_state(self, memory: FPHTRMemory) -> FPHTRState:
        """State before the first step: empty self-attention caches, memory keys/values projected once."""
        n, _, d = memory.memory.shape
        heads = self.cfg.num_heads
        empty = memory.memory.new_zeros(n, heads, 0, d // heads)
        return FPHTRState(tuple(KVCache(empty, empty) for _ in self.layers),
                          tuple(layer.cross_attn.project_kv(memory.memory) for layer in self.layers),
                          memory.mask, 0, torch.arange(n, device=memory.memory.device))

    def step(self, tokens: Tensor, state: FPHTRState) -> tuple[Tensor, FPHTRState]:
        """One step. Args: tokens `(N,)` each row's last token. Returns h `(N, d)` and the new state."""
        x = self._embed(tokens[:, None], offset=state.length)  # (N, 1, d)
        memory_mask = state.memory_mask[:, None, None, :]  # (N, 1, 1, S)
        caches = []
        for layer, self_kv, memory_kv in zip(self.layers, state.self_kv, state.memory_kv, strict=True):
            self_kv = self_kv.append(layer.self_attn.project_kv(x))
            x = layer(x, self_kv, None, memory_kv, memory_mask)  # every cached input is real: no mask
            caches.append(self_kv)
        return x[:, 0], FPHTRState(tuple(caches), state.memory_kv, state.memory_mask, state.length + 1,
                                   state.source)

    def logits(self, h: Tensor) -> Tensor:
        """The classifier: `(..., d)` → `(..., V)`."""
        return self.classifier(h)
