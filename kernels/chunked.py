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
    # Pad L to a multiple of Q with Δ = 0 steps (ā = 1, b̄ = 0), which leave the state unchanged, and
    # lay time out chunk-position-major, (Q, …, nc), so every step of the loops below is contiguous.
    nc = -(-length // q) if length else 0
    pad = nc * q - length
    dt_q = _q_major(F.pad(dt, (0, pad)), nc, q)  # (Q, Bsz, D, nc)
    dtu_q = _q_major(F.pad(dt * u_c, (0, pad)), nc, q)
    B_q = _bc_q_major(per_channel(B.to(ct), dim), pad, nc, q)  # (Q|1, Bsz|1, D|1, nc|1, N)
    C_q = _bc_q_major(per_channel(C.to(ct), dim), pad, nc, q)
    a = torch.exp(dt_q[..., None] * A.to(ct)[:, None, :])  # (Q, Bsz, D, nc, N)
    bu = dtu_q[..., None] * B_q  # (Q, Bsz, D, nc, N)

    h_local = _local_scan(a, bu)  # (Q, Bsz, D, nc, N): states from a zero start in each chunk
    a_prod = torch.cumprod(a, dim=0)  # (Q, Bsz, D, nc, N): ∏ ā from the chunk start, ≤ 1
    h0 = u_c.new_zeros(bsz, dim, n) if initial_state is None else initial_state.to(ct)
    h_in = _carry_across_chunks(a_prod[-1], h_local[-1], h0)  # (Bsz, D, nc, N)
    h = h_local + a_prod * h_in  # (Q, Bsz, D, nc, N)

    y = (h * C_q).sum(-1).movedim(0, -1).flatten(-2)[..., :length]  # (Bsz, D, L)
    if D is not None:
        y = y + D.to(ct)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(ct))
    last = h[(length - 1) % q, :, :, (length - 1) // q] if length else h0
    return y.to(u.dtype), last


def _q_major(x: torch.Tensor, nc: int, q: int) -> torch.Tensor:
    """`(…, nc·Q)` → `(Q, …, nc)`, contiguous."""
    return x.unflatten(-1, (nc, q)).movedim(-1, 0).contiguous()


def _bc_q_major(x: torch.Tensor, pad: int, nc: int, q: int) -> torch.Tensor:
    """Per-channel B or C `(Bsz|1, D|1, N, L|1)` → `(Q|1, Bsz|1, D|1, nc|1, N)`."""
    if x.shape[-1] == 1:  # time-invariant: broadcast over Q and nc
        return x.transpose(-1, -2)[None]
    return _q_major(F.pad(x, (0, pad)), nc, q).transpose(-1, -2)


def _local_scan(a: torch.Tensor, bu: torch.Tensor) -> torch.Tensor:
    """Run h ← ā·h + b̄ from zero inside every chunk at once; `(Q, …)` in and out."""
    states = []
    h = torch.zeros_like(bu[0])
    # unbind rather than index: indexing's backward writes a full-size zero tensor per step.
    for a_i, bu_i in zip(a.unbind(0), bu.unbind(0), strict=True):
        h = a_i * h + bu_i
        states.append(h)
    return torch.stack(states, dim=0)


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
