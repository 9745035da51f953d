"""Small shared network pieces: multi-head attention with an explicit additive bias and an explicit
key/value cache, and sinusoidal 1-D and 2-D positional encodings.

The attention is split into ``logits`` (scaled, masked QKᵀ) and ``attend`` (bias, softmax, dropout, values,
output projection) so that a correction term computed *from* the attention — CoMER's ARM, which needs the
unrefined probabilities first — is an ordinary ``bias`` tensor rather than a hook inside the module.
Keys and values travel in a frozen :class:`KVCache` that callers create (``project_kv``), extend
(``append``) and reorder (``index_select``); nothing is stored on the module.

References: Vaswani et al., "Attention Is All You Need" (NeurIPS 2017) for the attention and the 1-D
encoding; Carion et al., DETR (ECCV 2020) for the normalised 2-D encoding.

Legend: N batch rows, H heads, Lq queries, T keys, d model width, d_h = d / H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Dropout",
    "KVCache",
    "MultiHeadAttention",
    "PositionalEncoding1d",
    "PostNormDecoderLayer",
    "reindex_sources",
    "sinusoidal_encoding_2d",
    "sinusoidal_table",
]


@dataclass(frozen=True)
class KVCache:
    """Projected keys and values, split into heads.

    Attributes:
        key: `(N, H, T, d_h)`.
        value: `(N, H, T, d_h)`.
    """

    key: Tensor
    value: Tensor

    @property
    def length(self) -> int:
        """T, the number of cached positions."""
        return self.key.shape[2]

    def append(self, other: KVCache) -> KVCache:
        """This cache followed by ``other`` along time (one new entry per decoding step)."""
        return KVCache(torch.cat([self.key, other.key], dim=2), torch.cat([self.value, other.value], dim=2))

    def index_select(self, index: Tensor) -> KVCache:
        """Select or duplicate rows. Args: index `(N',)` long."""
        return KVCache(self.key.index_select(0, index), self.value.index_select(0, index))


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on the CPU; elsewhere (and in eval mode) exactly ``nn.Dropout``.

    PyTorch's CPU dropout draws one Mersenne-Twister number per element, single-threaded: on the 2-core
    machine about 31 ms for a (16, 250, 576) activation, ~9 % of a Samba-ASR training step. Here one
    64-bit draw gives the bytes of 8 elements and an element is kept when its byte is >= round(256·p), so
    the drop rate is p rounded to a multiple of 1/256 (0.1 → 26/256 ≈ 0.102) and the kept values are
    scaled by 256 / (256 − round(256·p)), which keeps the expectation exact. About 6 ms for the same
    tensor. Same generator (seeded runs repeat), and the backward saves a bool mask, not a float one.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Args: x, any shape. Returns: the same shape."""
        drop = round(self.p * 256)
        if not self.training or x.device.type != "cpu" or not 0 < drop < 256:
            return super().forward(x)
        words = torch.empty((x.numel() + 7) // 8, dtype=torch.int64).random_(-(2**63), None)
        keep = words.view(torch.uint8)[: x.numel()].view(x.shape) >= drop
        return torch.where(keep, x * (256 / (256 - drop)), 0.0)


def reindex_sources(source: Tensor, index: Tensor) -> tuple[Tensor, bool]:
    """The source ids of decoding rows after ``index_select(0, index)``, and whether every row kept its own.

    Rows that share a source (an image, an utterance) hold identical copies of its memory keys/values and
    mask, since all of them are gathered from one row per source. A beam-search reorder only reshuffles
    hypotheses within each input, so when the row count is unchanged and each row keeps its source, those
    copies need not be gathered again: about a third of a cached decoding step was that copy.

    Args:
        source: `(N,)` long, the source of each row.
        index: `(N',)` long, the rows to select or duplicate.

    Returns:
        `(N',)` sources of the new rows, and True when ``N' == N`` and every row kept its source.
    """
    new = source.index_select(0, index)
    return new, new.shape == source.shape and bool(torch.equal(new, source))


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``num_heads`` heads, with biased projections (as torch's).

    Args:
        d_model: d, the width of queries, keys and values.
        num_heads: H; must divide ``d_model``.
        dropout: on the attention probabilities.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads {num_heads} must divide d_model {d_model}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        n, length, d = x.shape
        return x.view(n, length, self.num_heads, d // self.num_heads).transpose(1, 2)  # (N, H, L, d_h)

    def project_kv(self, x: Tensor) -> KVCache:
        """Keys and values of `(N, T, d)` inputs, as a cache of T entries."""
        return KVCache(self._split(self.k_proj(x)), self._split(self.v_proj(x)))

    def logits(self, query: Tensor, kv: KVCache, mask: Tensor | None = None) -> Tensor:
        """E = QKᵀ/√d_h with blocked keys at −inf.

        Args:
            query: `(N, Lq, d)`.
            kv: keys and values of T positions.
            mask: bool, True where a key is blocked; broadcastable to `(N, H, Lq, T)`.

        Returns:
            `(N, H, Lq, T)`.
        """
        q = self._split(self.q_proj(query))  # (N, H, Lq, d_h)
        scores = q @ kv.key.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (N, H, Lq, T)
        return scores if mask is None else scores.masked_fill(mask, float("-inf"))

    def probabilities(self, logits: Tensor) -> Tensor:
        """Softmax over keys, then dropout: `(N, H, Lq, T)` → `(N, H, Lq, T)`."""
        return self.dropout(logits.softmax(dim=-1))

    def attend(self, logits: Tensor, kv: KVCache, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attend the values with probabilities ``softmax(logits + bias)``.

        Blocked keys stay blocked: −inf plus a finite bias is −inf.

        Args:
            logits: `(N, H, Lq, T)` from :meth:`logits`.
            kv: the keys and values the logits were computed on.
            bias: additive, broadcastable to `(N, H, Lq, T)`; None for none.

        Returns:
            Output `(N, Lq, d)` and the probabilities `(N, H, Lq, T)` (after dropout).
        """
        probs = self.probabilities(logits if bias is None else logits + bias)
        out = (probs @ kv.value).transpose(1, 2).flatten(2)  # (N, Lq, d)
        return self.out_proj(out), probs

    def forward(self, query: Tensor, kv: KVCache, mask: Tensor | None = None,
                bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`logits` then :meth:`attend`; returns `(N, Lq, d)` and `(N, H, Lq, T)`."""
        return self.attend(self.logits(query, kv, mask), kv, bias)


class PostNormDecoderLayer(nn.Module):
    """Post-norm transformer decoder layer, as torch's ``nn.TransformerDecoderLayer`` (same parameter names),
    with explicit key/value caches so one set of weights serves teacher forcing and step-by-step decoding.
    Split into its three residual blocks for decoders that change one of them (PosFormer refines the
    cross-attention logits before their softmax).

    Args:
        d_model: width d.
        num_heads: attention heads H.
        dim_feedforward: hidden width of the feed-forward block.
        dropout: dropout after attention, in the feed-forward block and on each residual branch.
        activation: ``"relu"`` or ``"gelu"``.
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float,
                 activation: str = "relu") -> None:
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)
        self.activation = F.relu if activation == "relu" else F.gelu

    def self_block(self, x: Tensor, kv: KVCache, mask: Tensor | None) -> Tensor:
        """Args: x `(N, Lq, d)`, kv of the keys so far, mask True where blocked. Returns `(N, Lq, d)`."""
        return self.norm1(x + self.dropout(self.self_attn(x, kv, mask)[0]))

    def cross_block(self, x: Tensor, memory_kv: KVCache, memory_mask: Tensor) -> Tensor:
        """Args: x `(N, Lq, d)`, the memory's keys/values and mask (True = blocked), broadcastable to
        `(N, H, Lq, S)`. Returns `(N, Lq, d)`."""
        return self.norm2(x + self.dropout(self.cross_attn(x, memory_kv, memory_mask)[0]))

    def ff_block(self, x: Tensor) -> Tensor:
        hidden = self.dropout(self.activation(self.linear1(x)))  # (N, Lq, dim_feedforward)
        return self.norm3(x + self.dropout(self.linear2(hidden)))

    def forward(self, x: Tensor, self_kv: KVCache, self_mask: Tensor | None, memory_kv: KVCache,
                memory_mask: Tensor) -> Tensor:
        """The three blocks in turn. Args: x `(N, Lq, d)` and the keys/values to attend with their masks.
        Returns `(N, Lq, d)`."""
        return self.ff_block(self.cross_block(self.self_block(x, self_kv, self_mask), memory_kv, memory_mask))


def sinusoidal_table(length: int, d_model: int, temperature: float = 10000.0,
                     device: torch.device | str | None = None) -> Tensor:
    """The 1-D sinusoidal table pe[p, 2i] = sin(p·ω_i), pe[p, 2i+1] = cos(p·ω_i), ω_i = 10000^(−2i/d).

    Computed in float64, returned as float32 `(length, d)`; ``d_model`` must be even.
    """
    if d_model % 2:
        raise ValueError(f"d_model must be even, got {d_model}")
    steps = torch.arange(0, d_model, 2, dtype=torch.float64, device=device)
    freqs = temperature ** (-steps / d_model)  # (d/2,)
    angles = torch.arange(length, dtype=torch.float64, device=device)[:, None] * freqs  # (length, d/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).float()  # (length, d), interleaved


class PositionalEncoding1d(nn.Module):
    """Adds the sinusoidal encoding pe[p, 2i] = sin(p·ω_i), pe[p, 2i+1] = cos(p·ω_i), ω_i = 10000^(−2i/d).

    Args:
        d_model: d (even).
        max_len: the longest sequence that can be encoded.
    """

    def __init__(self, d_model: int, max_len: int, temperature: float = 10000.0) -> None:
        super().__init__()
        pe = sinusoidal_table(max_len, d_model, temperature)  # (max_len, d)
        self.register_buffer("pe", pe, persistent=False)  # derived, so not in checkpoints

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """`(N, L, d)` → `(N, L, d)` with positions ``offset .. offset + L − 1`` added."""
        end = offset + x.shape[1]
        if end > self.pe.shape[0]:
            raise ValueError(f"position {end - 1} is beyond max_len {self.pe.shape[0]}")
        return x + self.pe[offset:end].to(x.dtype)


def sinusoidal_encoding_2d(mask: Tensor, d_model: int, temperature: float = 10000.0,
                           eps: float = 1e-6) -> Tensor:
    """DETR's normalised 2-D sinusoidal encoding of the non-padded pixels.

    x (y) is the running count of valid pixels along the row (column), divided by that row's (column's)
    total and scaled by 2π, so an image's encoding does not depend on how much padding surrounds it. The
    first d/2 channels encode x and the last d/2 encode y, each as interleaved sin/cos over the
    frequencies 10000^(−2i/(d/2)). ``eps`` (DETR's) keeps fully padded rows and columns finite.

    Args:
        mask: `(N, h, w)` bool, True on padding.
        d_model: d, a multiple of 4.

    Returns:
        `(N, h, w, d)` float32.
    """
    if d_model % 4:
        raise ValueError(f"d_model must be a multiple of 4, got {d_model}")
    valid = (~mask).float()
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    y = y / (y[:, -1:, :] + eps) * 2 * math.pi  # (N, h, w)
    x = x / (x[:, :, -1:] + eps) * 2 * math.pi
    half = d_model // 2
    freqs = temperature ** (-torch.arange(0, half, 2, device=mask.device, dtype=torch.float32) / half)
    parts = []
    for coord in (x, y):
        angles = coord[..., None] * freqs  # (N, h, w, d/4)
        parts.append(torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(3))  # (N, h, w, d/2)
    return torch.cat(parts, dim=-1)  # (N, h, w, d)
