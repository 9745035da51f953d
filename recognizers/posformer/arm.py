"""CoMER's Attention Refinement Module (ARM) with PosFormer's Implicit Attention Correction (IAC),
posformer.md §3.3.

Zhao & Gao, "CoMER: Modeling Coverage for Transformer-Based Handwritten Mathematical Expression
Recognition" (ECCV 2022); Guan et al., "PosFormer: Recognizing Complex Handwritten Mathematical Expression
with Position Forest Transformer" (ECCV 2024).

For the cross-attention of decoder layer ℓ ≥ 2 (symbols as in the spec):

1. ``A = concat_heads(P_prev, P_cur)`` `(N, C=2H, L, S)`: the previous layer's refined attention and this
   layer's unrefined one (:func:`coverage_input`);
2. IAC: rows t whose token is in Ω get ``m[t] = 0``, ``A ← A ⊙ m`` (:func:`iac_keep`);
3. coverage ``Cov[t] = Σ_{t'<t} A[t']``, exclusive of the current step (:func:`exclusive_cumsum`, or the
   running :class:`CoverageState` when decoding step by step);
4. ``R = BN_masked(conv1×1(zero_pad(ReLU(conv5×5(Cov)))))`` per head (:class:`AttentionRefinement`);
5. the layer then attends with ``softmax(E − R)``.

Alignment of m: ``"input"`` (the reference) keys on the decoder input ``tgt[t]``; ``"output"`` (the
ablation) keys on ``out[t] = tgt[t+1]``, which a step-by-step decoder only learns at the next step, so the
running state holds the last step's attention back until then.

Legend: N rows, H heads, C = H · (enabled coverage kinds), L steps, h×w feature cells, S = h·w, dc hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import DecoderConfig

__all__ = [
    "AttentionRefinement",
    "CoverageState",
    "MaskedBatchNorm",
    "coverage_input",
    "exclusive_cumsum",
    "iac_keep",
]


def iac_keep(tokens: Tensor, iac_ids: Tensor) -> Tensor:
    """1 where a token's attention row may enter the coverage, 0 where the token is in Ω.

    Args:
        tokens: `(N, ...)` long.
        iac_ids: `(|Ω|,)` long (empty: keep everything, CoMER).

    Returns:
        Float tensor shaped like ``tokens``.
    """
    return (~torch.isin(tokens, iac_ids)).float()


def coverage_input(p_prev: Tensor, p_cur: Tensor, use_prev: bool = True, use_cur: bool = True) -> Tensor:
    """``concat_heads(P_prev, P_cur)`` (cross- and self-coverage), either half optional:
    `(N, H, L, S)` x2 → `(N, C, L, S)`."""
    return torch.cat([p for p, use in ((p_prev, use_prev), (p_cur, use_cur)) if use], dim=1)


def exclusive_cumsum(a: Tensor, dim: int = 2) -> Tensor:
    """``out[t] = Σ_{t'<t} a[t']`` along ``dim`` (zero at t = 0), summed in time order like the running
    sum of step-by-step decoding."""
    summed = a.cumsum(dim).narrow(dim, 0, a.shape[dim] - 1)
    return torch.cat([torch.zeros_like(a.narrow(dim, 0, 1)), summed], dim=dim)


@dataclass(frozen=True)
class CoverageState:
    """Running coverage of one refined layer during step-by-step decoding.

    Attributes:
        total: `(N, C, S)` masked attention summed over the steps whose mask is known.
        pending: `(N, C, S)` the last step's attention awaiting its output-aligned mask, else None.
    """

    total: Tensor
    pending: Tensor | None = None

    def index_select(self, index: Tensor) -> CoverageState:
        """Select or duplicate rows. Args: index `(N',)` long."""
        pending = None if self.pending is None else self.pending.index_select(0, index)
        return CoverageState(self.total.index_select(0, index), pending)

    def resolve(self, keep: Tensor) -> CoverageState:
        """Add the pending row with mask ``keep`` `(N,)` (output alignment: the current input token)."""
        if self.pending is None:
            return self
        return CoverageState(self.total + keep[:, None, None] * self.pending)

    def push(self, a: Tensor, keep: Tensor | None) -> CoverageState:
        """Record this step's attention `(N, C, S)`: added with mask ``keep`` `(N,)`, or held back
        (``keep=None``) until :meth:`resolve`. Call after :meth:`resolve`."""
        if keep is None:
            return CoverageState(self.total, a)
        return CoverageState(self.total + keep[:, None, None] * a)


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the non-padded pixels only; padded pixels come out as 0.

    Args:
        channels: normalised channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """Args: x `(M, K, h, w)`, pad `(M, h, w)` bool. Returns: `(M, K, h, w)`.

        The same numbers as ``self.bn`` applied to the valid pixels gathered as `(P, K)` rows, but
        computed with masked sums: gathering by a boolean mask needs the count P on the host, a device
        sync per call, which stalled GPU training (benchmarks/RESULTS.md, PosFormer on a GPU).
        """
        bn, dtype = self.bn, x.dtype
        x = x.float()  # statistics in float32, as autocast runs batch norm
        keep = (~pad)[:, None].to(x.dtype)  # (M, 1, h, w)
        if bn.training:
            count = keep.sum()  # P
            mean = (x * keep).sum((0, 2, 3)) / count.clamp(min=1)  # (K,)
            var = ((x - mean[:, None, None]) ** 2 * keep).sum((0, 2, 3)) / count.clamp(min=1)  # biased
            with torch.no_grad():  # BatchNorm1d's running statistics: momentum, unbiased variance
                bn.num_batches_tracked += 1
                m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.mul_(1 - m).add_(m * mean.detach())
                bn.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1).clamp(min=1))
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = bn.weight * torch.rsqrt(var + bn.eps)  # (K,)
        out = (x - mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]
        return (out * keep).to(dtype)  # padded pixels are 0


class AttentionRefinement(nn.Module):
    """Turns coverage maps into the refinement term R subtracted from the attention logits.

    One instance is shared by all refined layers of a decoder stack (§3.3).

    Args:
        cfg: the decoder configuration (heads, ``arm.coverage_channels``, ``arm.kernel_size``).
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        k = cfg.arm.kernel_size
        self.num_heads = cfg.num_heads
        self.conv = nn.Conv2d(cfg.coverage_inputs, cfg.arm.coverage_channels, k, padding=k // 2)
        self.proj = nn.Conv2d(cfg.arm.coverage_channels, cfg.num_heads, 1, bias=False)
        self.norm = MaskedBatchNorm(cfg.num_heads)

    def forward(self, coverage: Tensor, pixel_mask: Tensor) -> Tensor:
        """R for every step.

        Args:
            coverage: `(N, C, L, S)` exclusive coverage.
            pixel_mask: `(N, h, w)` bool, True on padded cells.

        Returns:
            `(N, H, L, S)`, zero on padded cells.
        """
        n, c, length, _ = coverage.shape
        h, w = pixel_mask.shape[1:]
        x = coverage.transpose(1, 2).reshape(n * length, c, h, w)  # (N·L, C, h, w)
        pad = pixel_mask.repeat_interleave(length, dim=0)  # (N·L, h, w)
        x = torch.relu(self.conv(x)).masked_fill(pad[:, None], 0.0)  # (N·L, dc, h, w)
        x = self.norm(self.proj(x), pad)  # (N·L, H, h, w)
        return x.view(n, length, self.num_heads, h * w).transpose(1, 2)  # (N, H, L, S)
