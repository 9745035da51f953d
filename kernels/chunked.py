"""A two-level chunked selective scan in pure PyTorch (samba-asr.md §6, option 3).

Time is cut into chunks of Q steps. Inside each chunk the recurrence runs locally from a zero state
(Q Python steps over all chunks at once); the chunk-end states are then carried across chunks
(L/Q Python steps); finally each position adds the carried-in state times the running product of
ā inside its chunk. That is about Q + L/Q Python steps instead of L.

Stability: only products of ā = exp(Δ·A) ∈ (0, 1] are formed, never exp of a cumulative sum with the
sign flipped (the "divide trick" of VMamba's mamba-mini, which overflows as chunks grow). The results
are independent of Q up to rounding, which the property tests check.

Gradients come from autograd; this path materialises several `(Bsz, D, L, N)` tensors, so it is the
portable baseline, not the fast path. Shapes follow the legend of ``kernels._common``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import compute_dtype, effective_delta, per_channel

__all__ = ["default_chunk_size", "selective_scan_chunked"]


def default_chunk_size(length: int) -> int:
    """About √L, which balances the two sequential loops (Q steps inside, L/Q across)."""
    return max(1, math.isqrt(max(length, 1)))


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked scan with the same arguments and results as ``selective_scan_ref``.

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, mask: as in
            ``kernels.reference.selective_scan_ref``.
        chunk_size: Q, the chunk length; None picks about √L.

    Returns:
        out `(Bsz, D, L)` in u's dtype and the last state `(Bsz, D, N)` in the compute dtype.
    """
    ct = compute_dtype(u)
    bsz, dim, length = u.shape
    n = A.shape[1]
    q = chunk_size or default_chunk_size(length)
    if q < 1:
        raise ValueError(f"selective_scan_chunked: chunk_size must be >= 1, got {q}")
    u_c = u.to(ct)
    dt = effective_delta(delta.to(ct), delta_bias, delta_softplus, mask)  # (Bsz, D, L)
    Bc = per_channel(B.to(ct), dim).transpose(-1, -2)  # (Bsz|1, D|1, L|1, N)
    Cc = per_channel(C.to(ct), dim).transpose(-1, -2)
    a = torch.exp(dt[..., None] * A.to(ct)[:, None, :])  # (Bsz, D, L, N)
    bu = (dt * u_c)[..., None] * Bc  # (Bsz, D, L, N)

    # Pad L to a multiple of Q with identity steps (ā = 1, b̄ = 0): they leave the state unchanged.
    nc = -(-length // q) if length else 0
    pad = nc * q - length
    if pad:
        a = F.pad(a, (0, 0, 0, pad), value=1.0)
        bu = F.pad(bu, (0, 0, 0, pad), value=0.0)
    a = a.reshape(bsz, dim, nc, q, n)  # (Bsz, D, nc, Q, N)
    bu = bu.reshape(bsz, dim, nc, q, n)

    h_local = _local_scan(a, bu)  # (Bsz, D, nc, Q, N): states from a zero start in each chunk
    a_prod = torch.cumprod(a, dim=3)  # (Bsz, D, nc, Q, N): ∏ ā from the chunk start, ≤ 1
    h0 = u_c.new_zeros(bsz, dim, n) if initial_state is None else initial_state.to(ct)
    h_in = _carry_across_chunks(a_prod[:, :, :, -1], h_local[:, :, :, -1], h0)  # (Bsz, D, nc, N)
    h = h_local + a_prod * h_in[:, :, :, None]  # (Bsz, D, nc, Q, N)
    h = h.reshape(bsz, dim, nc * q, n)[:, :, :length]  # (Bsz, D, L, N)

    y = (h * Cc).sum(-1)  # (Bsz, D, L)
    if D is not None:
        y = y + D.to(ct)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(ct))
    last = h[:, :, -1] if length else h0
    return y.to(u.dtype), last


def _local_scan(a: torch.Tensor, bu: torch.Tensor) -> torch.Tensor:
    """Run h ← ā·h + b̄ from zero inside every chunk at once; `(…, Q, N)` in and out."""
    states = []
    h = torch.zeros_like(bu[..., 0, :])
    # unbind rather than index: indexing's backward writes a full-size zero tensor per step.
    for a_i, bu_i in zip(a.unbind(-2), bu.unbind(-2), strict=True):
        h = a_i * h + bu_i
        states.append(h)
    return torch.stack(states, dim=-2)


def _carry_across_chunks(a_end: torch.Tensor, h_end: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """States entering each chunk.

    Args:
        a_end: `(Bsz, D, nc, N)` product of ā over each whole chunk.
        h_end: `(Bsz, D, nc, N)` chunk-final local state (from a zero start).
        h0: `(Bsz, D, N)` state before the first chunk.

    Returns:
        `(Bsz, D, nc, N)`: entry c is the true state just before chunk c.
    """
    carried = [h0]
    for a_c, h_c in zip(a_end.unbind(2)[:-1], h_end.unbind(2)[:-1], strict=True):
        carried.append(a_c * carried[-1] + h_c)
    return torch.stack(carried, dim=2)
