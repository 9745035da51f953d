"""SAR's decoder side (writer-htr.md §4.3): a holistic LSTM encoder and an LSTM decoder with 2-D attention.

Li et al., "Show, Attend and Read: A Simple and Strong Baseline for Irregular Text Recognition"
(AAAI 2019), in the form of MMOCR's ``SAREncoder`` + ``ParallelSARDecoder`` used by the thesis
(``htr/htr/models/sar/sar.py``; cross-checked, not copied):

* holistic encoder: max-pool the feature map over its rows, run a 2-layer LSTM over the columns, take
  the output at the last real column, Linear → h_hol `(B, H)`;
* decoder: the LSTM reads ``[h_hol, emb(<sos>), emb(y_1), ...]``; step t's output y_t queries a 2-D
  additive attention over every feature cell (keys from a 3×3 conv of the feature map, values the
  features themselves), giving the glimpse g_t;
* classifier: Linear(2H + C → V) on ``[y_t, g_t, h_hol]`` (``pred_concat``), then dropout on the
  logits (as MMOCR; inactive in eval mode). Step 0 (the h_hol input) predicts nothing and is dropped.

The reference's greedy decoder re-runs the LSTM over the whole prefix at every step (O(T²)). Here
:meth:`SARDecoder.step` carries the LSTM state explicitly, so each step costs O(1) LSTM work and gives
the same logits as the full recomputation (the LSTM is causal).

Deliberate deviations: padded rows and columns are kept out of the max-pool and the attention (MMOCR
masks only padded columns of the attention, via valid ratios), so results do not depend on padding.

Legend: B images (N rows when decoding), T steps, h×w feature cells, S = h·w, C backbone channels,
H LSTM width, d_k attention width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import SARConfig

__all__ = ["SARDecoder", "SARMemory", "SARState"]


@dataclass(frozen=True)
class SARMemory:
    """The encoded images.

    Attributes:
        keys: `(B, S, d_k)` attention keys (3×3 conv of the feature map), row-major cells.
        values: `(B, S, C)` the features themselves.
        mask: `(B, S)` bool, True on padded cells.
        holistic: `(B, H)` h_hol, the holistic feature.
    """

    keys: Tensor
    values: Tensor
    mask: Tensor
    holistic: Tensor

    def index_select(self, index: Tensor) -> SARMemory:
        """Select or duplicate rows. Args: index `(N,)` long."""
        return SARMemory(self.keys.index_select(0, index), self.values.index_select(0, index),
                         self.mask.index_select(0, index), self.holistic.index_select(0, index))


@dataclass(frozen=True)
class SARState:
    """Step-by-step decoding state, one row per hypothesis.

    Attributes:
        hidden: `(L, N, H)` the decoder LSTM's hidden state after the inputs so far (L layers).
        cell: `(L, N, H)` its cell state.
        memory: the encoded images, one row per hypothesis.
    """

    hidden: Tensor
    cell: Tensor
    memory: SARMemory

    def index_select(self, index: Tensor) -> SARState:
        """Select or duplicate hypotheses (beam search). Args: index `(N',)` long."""
        return SARState(self.hidden.index_select(1, index), self.cell.index_select(1, index),
                        self.memory.index_select(index))


def _lstm(input_size: int, cfg: SARConfig, dropout: float) -> nn.LSTM:
    return nn.LSTM(input_size, cfg.hidden, cfg.num_layers, batch_first=True,
                   dropout=dropout if cfg.num_layers > 1 else 0.0)


class SARDecoder(nn.Module):
    """Holistic encoder, attention decoder and classifier of SAR.

    Args:
        cfg: decoder sizes.
        in_channels: C, the backbone's output width.
        vocab_size: V.
    """

    def __init__(self, cfg: SARConfig, in_channels: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder_rnn = _lstm(in_channels, cfg, cfg.encoder_dropout)
        self.holistic = nn.Linear(cfg.hidden, cfg.hidden)
        self.embed = nn.Embedding(vocab_size, cfg.hidden)
        self.decoder_rnn = _lstm(cfg.hidden, cfg, cfg.decoder_dropout)
        self.key = nn.Conv2d(in_channels, cfg.d_k, 3, padding=1)
        self.query = nn.Linear(cfg.hidden, cfg.d_k)
        self.score = nn.Linear(cfg.d_k, 1)
        features = 2 * cfg.hidden + in_channels if cfg.pred_concat else in_channels
        self.classifier = nn.Linear(features, vocab_size)
        self.pred_dropout = nn.Dropout(cfg.pred_dropout)

    def _holistic(self, feat: Tensor, feat_mask: Tensor) -> Tensor:
        """`(B, C, h, w)` features → h_hol `(B, H)` from the LSTM output at each image's last real column."""
        pooled = feat.masked_fill(feat_mask[:, None], float("-inf")).amax(dim=2)  # (B, C, w)
        real_cols = ~feat_mask.all(dim=1)  # (B, w)
        pooled = torch.where(real_cols[:, None], pooled, torch.zeros_like(pooled))  # padded columns: 0
        out, _ = self.encoder_rnn(pooled.transpose(1, 2))  # (B, w, H)
        last = (real_cols.sum(dim=1) - 1).clamp_min(0)  # (B,)
        return self.holistic(out[torch.arange(out.shape[0], device=out.device), last])  # (B, H)

    def encode(self, feat: Tensor, feat_mask: Tensor) -> SARMemory:
        """Args: feat `(B, C, h, w)` (zero on padded cells), feat_mask `(B, h, w)` True on padding.
        Returns the memory."""
        keys = self.key(feat).flatten(2).transpose(1, 2)  # (B, S, d_k)
        values = feat.flatten(2).transpose(1, 2)  # (B, S, C)
        return SARMemory(keys, values, feat_mask.flatten(1), self._holistic(feat, feat_mask))

    def _classifier_input(self, y: Tensor, memory: SARMemory) -> Tensor:
        """Decoder outputs y `(B, T, H)` → classifier inputs `(B, T, 2H + C)` (or `(B, T, C)`)."""
        query = self.query(y)  # (B, T, d_k)
        energy = self.score(torch.tanh(memory.keys[:, None] + query[:, :, None]))[..., 0]  # (B, T, S)
        weights = energy.masked_fill(memory.mask[:, None], float("-inf")).softmax(dim=-1)  # (B, T, S)
        glimpse = weights @ memory.values  # (B, T, C)
        if not self.cfg.pred_concat:
            return glimpse
        holistic = memory.holistic[:, None].expand(-1, y.shape[1], -1)  # (B, T, H)
        return torch.cat([y, glimpse, holistic], dim=-1)  # (B, T, 2H + C)

    def features(self, memory: SARMemory, tgt: Tensor) -> Tensor:
        """Teacher-forced classifier inputs.

        Args:
            memory: the encoded images (B rows).
            tgt: `(B, T)` decoder inputs ``[<sos>, y_1, ...]``.

        Returns:
            h `(B, T, 2H + C)`: the classifier's input at steps 1..T (step 0, the h_hol input, dropped).
        """
        inputs = torch.cat([memory.holistic[:, None], self.embed(tgt)], dim=1)  # (B, T + 1, H)
        y, _ = self.decoder_rnn(inputs)  # (B, T + 1, H)
        return self._classifier_input(y[:, 1:], memory)

    def init_state(self, memory: SARMemory) -> SARState:
        """State before the first step: the decoder LSTM has read h_hol (step 0)."""
        _, (hidden, cell) = self.decoder_rnn(memory.holistic[:, None])  # (L, B, H) each
        return SARState(hidden, cell, memory)

    def step(self, tokens: Tensor, state: SARState) -> tuple[Tensor, SARState]:
        """One step. Args: tokens `(N,)` each row's last token. Returns h `(N, 2H + C)` and the new state."""
        x = self.embed(tokens)[:, None]  # (N, 1, H)
        y, (hidden, cell) = self.decoder_rnn(x, (state.hidden, state.cell))  # (N, 1, H)
        h = self._classifier_input(y, state.memory)[:, 0]  # (N, 2H + C)
        return h, SARState(hidden, cell, state.memory)

    def logits(self, h: Tensor) -> Tensor:
        """The classifier, then dropout on the logits (MMOCR): `(..., F)` → `(..., V)`."""
        return self.pred_dropout(self.classifier(h))
