"""Mamba-1 mixers for Samba-ASR: the unidirectional block with recurrent decoding, and the inner
bidirectional block of the encoder (samba-asr.md §3, §4).

References: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv
2312.00752) and the block of state-spaces/mamba ``mamba_simple.Mamba`` (described in the spec, not
copied); Vim / ConMamba for the inner BiMamba. The selective scan runs in ``kernels``.

Legend: B batch, L time, d d_model, D = expand·d channels, N d_state, R dt_rank, K d_conv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .config import MambaConfig

__all__ = ["BiMamba", "Mamba", "MambaState", "SSMBranch", "channels_first", "rescale_out_proj_",
           "split_in_proj"]


def _state_dtype(t: torch.Tensor) -> torch.dtype:
    """The SSM keeps float32 (float64 for a float64 model) whatever the activation dtype (§2)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def channels_first(linear: nn.Linear, x: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
    """``linear`` (or its output channels ``rows``) applied to channel-first ``x``, written channel-first.

    One batched matmul writes `(B, out, L)` contiguously, as the conv and the scan kernel want it;
    ``linear(x.transpose(1, 2)).transpose(1, 2)`` is a strided view that they copy (the scan twice: in its
    forward and its backward), and with the other layout round trips that was ~10 % of a CPU training step.

    Args:
        linear: weight `(out, d)` and optional bias `(out,)`.
        x: `(B, d, L)`, any strides (e.g. the transpose of a `(B, L, d)` activation).
        rows: the output channels to compute (one chunk of ``in_proj``).

    Returns:
        `(B, out', L)`, contiguous.
    """
    out = torch.matmul(linear.weight[rows], x)
    return out if linear.bias is None else out + linear.bias[rows, None]


def split_in_proj(in_proj: nn.Linear, channels: int, x: torch.Tensor,
                  mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv input and the gate of a mixer, each `(B, D, L)` contiguous, from x `(B, L, d)`; the conv
    input is zero at padded steps (mask `(B, L)`, False there), or the conv bias would leak into them."""
    xt = x.transpose(1, 2)  # (B, d, L) view
    x_in = channels_first(in_proj, xt, slice(0, channels))
    z = channels_first(in_proj, xt, slice(channels, None))
    if mask is not None:
        x_in = x_in * mask[:, None, :].to(x_in.dtype)
    return x_in, z


@dataclass(frozen=True)
class MambaState:
    """Recurrent state of one Mamba mixer: O(D·(K + N)) per sequence, whatever the length."""

    conv: torch.Tensor  # (B, D, K): the last K inputs of the convolution
    ssm: torch.Tensor  # (B, D, N): float32 SSM state

    def index_select(self, index: torch.Tensor) -> MambaState:
        """Reorder or select sequences (beam search). Args: index `(B',)` long."""
        return MambaState(self.conv.index_select(0, index), self.ssm.index_select(0, index))


class SSMBranch(nn.Module):
    """Causal depthwise conv, SiLU, input-dependent (Δ, B, C) and the selective scan: one direction."""

    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        D, N, R = cfg.d_inner, cfg.d_state, cfg.rank
        self.cfg = cfg
        self.conv1d = nn.Conv1d(D, D, cfg.d_conv, groups=D, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, D, bias=True)
        self.A_log = nn.Parameter(torch.empty(D, N))
        self.D = nn.Parameter(torch.empty(D))
        for p in (self.A_log, self.D, self.dt_proj.bias):
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """The exact Mamba initialisation of samba-asr.md §3.3 (stability depends on it)."""
        cfg, D, N = self.cfg, self.cfg.d_inner, self.cfg.d_state
        bound = cfg.rank**-0.5 * cfg.dt_scale
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.empty(D).uniform_(math.log(cfg.dt_min), math.log(cfg.dt_max)))
        dt = dt.clamp(min=cfg.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]
        self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(D, 1))  # S4D-real
        self.D.fill_(1.0)

    def forward(self, x_in: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None,
                want_state: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the branch over whole sequences.

        Args:
            x_in: `(B, D, L)` pre-conv input, already zero at padded steps.
            z: `(B, D, L)` gate.
            mask: `(B, L)` bool (False = padding) or None.
            want_state: also return the SSM state after the last valid step.

        Returns:
            y `(B, D, L)` gated output, and the state `(B, D, N)` float32 or None.
        """
        length = x_in.shape[-1]
        u = F.silu(self.conv1d(x_in)[..., :length])  # (B, D, L)
        R, N = self.cfg.rank, self.cfg.d_state
        dbc = channels_first(self.x_proj, u)  # (B, R + 2N, L)
        dt_raw, B, C = dbc.split([R, N, N], dim=1)
        delta = torch.matmul(self.dt_proj.weight, dt_raw)  # (B, D, L); the bias is added in the scan
        A, Dskip, dt_bias = self._ssm_weights()
        result = kernels.selective_scan(u, delta, A, B, C, Dskip, z, dt_bias, delta_softplus=True, mask=mask,
                                        return_last_state=want_state)
        return result if want_state else (result, None)

    def _ssm_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A = −exp(A_log), D and the Δ bias, in float32 even under autocast (float64 stays float64)."""
        dtype = _state_dtype(self.A_log)
        return -torch.exp(self.A_log.to(dtype)), self.D.to(dtype), self.dt_proj.bias.to(dtype)

    def step(self, x_in: torch.Tensor, z: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One time step. Args: x_in, z `(B, D)`. Returns: y `(B, D)` and the new state."""
        conv = torch.cat([state.conv[..., 1:], x_in[..., None]], dim=-1)  # (B, D, K)
        u = (conv * self.conv1d.weight[:, 0]).sum(-1)  # (B, D)
        if self.conv1d.bias is not None:
            u = u + self.conv1d.bias
        u = F.silu(u)
        R, N = self.cfg.rank, self.cfg.d_state
        dt_raw, B, C = self.x_proj(u).split([R, N, N], dim=-1)
        ssm = state.ssm.clone()  # the kernel updates in place; the caller's state stays untouched
        A, Dskip, dt_bias = self._ssm_weights()
        y = kernels.selective_state_update(ssm, u, F.linear(dt_raw, self.dt_proj.weight), A, B, C, Dskip, z,
                                           dt_bias, dt_softplus=True)
        return y, MambaState(conv, ssm)


class Mamba(nn.Module):
    """The Mamba-1 mixer: in_proj → conv → selective scan gated by z → out_proj.

    ``forward(x, mask)`` is the parallel form; ``prefill`` also returns the recurrent state, and
    ``step`` advances it by one token with O(1) work (samba-asr.md §3.4).
    """

    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_inner, bias=cfg.bias)
        self.ssm = SSMBranch(cfg)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)

    def _split(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return split_in_proj(self.in_proj, self.cfg.d_inner, x, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x `(B, L, d)`; mask `(B, L)` bool, False at padding. Returns: `(B, L, d)`."""
        y, _ = self.ssm(*self._split(x, mask), mask)
        return channels_first(self.out_proj, y).transpose(1, 2)

    def prefill(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, MambaState]:
        """Forward over a prompt, returning the output and the state after each sequence's last valid
        step. Args: x `(B, L, d)`, mask `(B, L)`. Returns: `(B, L, d)` and the state."""
        x_in, z = self._split(x, mask)
        y, ssm = self.ssm(x_in, z, mask, want_state=True)
        return channels_first(self.out_proj, y).transpose(1, 2), MambaState(self._conv_tail(x_in, mask), ssm)

    def _conv_tail(self, x_in: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The last K conv inputs up to each sequence's last valid step, zero-padded on the left:
        `(B, D, K)`. Works for right-padded and left-aligned masks alike (the decoder's memory)."""
        bsz, _, length = x_in.shape
        K = self.cfg.d_conv
        steps = torch.arange(1, length + 1, device=x_in.device)
        ends = (steps * mask).amax(1) if mask is not None else torch.full((bsz,), length, device=x_in.device)
        idx = ends[:, None] - K + torch.arange(K, device=x_in.device)  # (B, K)
        padded = F.pad(x_in, (K, 0))  # (B, D, K + L): index i of x_in is K + i here
        return padded.gather(2, (idx + K).clamp(min=0)[:, None, :].expand(-1, x_in.shape[1], -1))

    def init_state(self, batch: int, device: torch.device | None = None) -> MambaState:
        """The zero state for ``batch`` new sequences."""
        D, K, N = self.cfg.d_inner, self.cfg.d_conv, self.cfg.d_state
        weight = self.in_proj.weight
        return MambaState(torch.zeros(batch, D, K, device=device, dtype=weight.dtype),
                          torch.zeros(batch, D, N, device=device, dtype=_state_dtype(weight)))

    def step(self, x: torch.Tensor, state: MambaState) -> tuple[torch.Tensor, MambaState]:
        """One token. Args: x `(B, d)`, the state. Returns: `(B, d)` and the new state."""
        x_in, z = self.in_proj(x).chunk(2, dim=-1)  # 2 x (B, D)
        y, state = self.ssm.step(x_in, z, state)
        return self.out_proj(y), state


class BiMamba(nn.Module):
    """Inner bidirectional Mamba (Vim "v2", used by ConMamba): shared in_proj and out_proj, one SSM
    branch on the sequence and a second, separately parametrised, on the time-reversed sequence;
    out = out_proj((y_fwd + flip(y_bwd)) / 2) (samba-asr.md §4).

    Padding: the reversed sequences start with their padded steps, which the mask turns into identity
    steps (zero conv input, Δ = 0), so each sequence's outputs do not depend on the batch padding.
    """

    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_inner, bias=cfg.bias)
        self.fwd = SSMBranch(cfg)
        self.bwd = SSMBranch(cfg)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: x `(B, L, d)`; mask `(B, L)` bool, False at padding. Returns: `(B, L, d)`."""
        x_in, z = split_in_proj(self.in_proj, self.cfg.d_inner, x, mask)
        y_f, _ = self.fwd(x_in, z, mask)
        flipped_mask = None if mask is None else mask.flip(-1)
        y_b, _ = self.bwd(x_in.flip(-1), z.flip(-1), flipped_mask)
        return channels_first(self.out_proj, 0.5 * (y_f + y_b.flip(-1))).transpose(1, 2)


@torch.no_grad()
def rescale_out_proj_(module: nn.Module, num_layers: int, residuals_per_layer: int = 1) -> None:
    """GPT-2-style prenorm residual rescale (samba-asr.md §3.3): every ``out_proj`` of a Mamba mixer
    is re-initialised Kaiming-uniform(a=√5) and divided by √(residuals_per_layer · num_layers)."""
    scale = math.sqrt(residuals_per_layer * num_layers)
    for m in module.modules():
        if isinstance(m, Mamba | BiMamba):
            nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
            m.out_proj.weight /= scale
