"""Triton single-step (decoding) state update, plus the Δ helper shared with ``triton_scan``.

``selective_state_update`` follows the design of samba-asr.md §6.3: grid (channel blocks, batch), each
program loads a `[BLOCK_D, N_PAD]` float32 state tile, applies one step of the recurrence and writes
the tile back in place. Semantics are those of ``kernels.reference.selective_state_update_ref``.
This module imports triton; only ``triton_scan`` (itself imported lazily) imports it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["selective_state_update"]

STEP_BLOCK_D = 32  # channels per program of the decode-step kernel


@triton.jit
def _delta_step(x, mk, SOFTPLUS: tl.constexpr):
    """Δ = softplus(x)·mk (identity above 20, as F.softplus) and dΔ/dx.

    There is no portable log1p, so log1p(w) is evaluated as log(1+w)·w/((1+w)−1): the ratio cancels
    the rounding of 1+w, which keeps small Δ (very negative x) accurate.
    """
    if SOFTPLUS:
        w = tl.exp(tl.minimum(x, 20.0))
        onep = 1.0 + w
        exact = onep == 1.0
        sp = tl.where(exact, w, tl.log(onep) * (w / tl.where(exact, 1.0, onep - 1.0)))
        big = x > 20.0
        dt = tl.where(big, x, sp)
        grad = tl.where(big, 1.0, tl.sigmoid(x))
    else:
        dt = x
        grad = tl.full(x.shape, 1.0, tl.float32)
    return dt * mk, grad * mk


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, Dsk_ptr, z_ptr, bias_ptr, out_ptr,
    dim, n, ss_b, ss_d, ss_n, sb_b, sb_g, sb_n, cpg_b, sc_b, sc_g, sc_n, cpg_c,
    BLOCK_D: tl.constexpr, N_PAD: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < dim
    offn = tl.arange(0, N_PAD)
    m2 = dmask[:, None] & (offn < n)[None, :]
    sp = state_ptr + b * ss_b + d[:, None] * ss_d + offn[None, :] * ss_n
    h = tl.load(sp, mask=m2, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * dim + d, mask=dmask, other=0.0).to(tl.float32)
    raw = tl.load(dt_ptr + b * dim + d, mask=dmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    dt, _ = _delta_step(raw, 1.0, SOFTPLUS)
    A = tl.load(A_ptr + d[:, None] * n + offn[None, :], mask=m2, other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + b * sb_b + (d // cpg_b)[:, None] * sb_g + offn[None, :] * sb_n, mask=m2, other=0.0)
    Ct = tl.load(C_ptr + b * sc_b + (d // cpg_c)[:, None] * sc_g + offn[None, :] * sc_n, mask=m2, other=0.0)
    h = tl.exp2(dt[:, None] * A * 1.4426950408889634) * h + (dt * x)[:, None] * Bt.to(tl.float32)
    tl.store(sp, h.to(state_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(h * Ct.to(tl.float32), axis=1)
    if HAS_D:
        y += tl.load(Dsk_ptr + d, mask=dmask, other=0.0).to(tl.float32) * x
    if HAS_Z:
        zz = tl.load(z_ptr + b * dim + d, mask=dmask, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + b * dim + d, y.to(out_ptr.dtype.element_ty), mask=dmask)


def _bc_step_layout(x: torch.Tensor, dim: int) -> tuple[int, int, int, int]:
    """Strides (batch, group, n) and channels per group of a `(Bsz, N)` or `(Bsz, G, N)` B/C."""
    if x.dim() == 2:
        return x.stride(0), 0, x.stride(1), dim
    return x.stride(0), x.stride(1), x.stride(2), dim // x.shape[1]


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One recurrent decoding step; ``state`` is updated in place (any strides).

    Args:
        state: `(Bsz, D, N)` float32 SSM state; overwritten with the new state.
        x, dt: `(Bsz, D)` input and raw step size; z: `(Bsz, D)` gate or None.
        A: `(D, N)`; B, C: `(Bsz, N)` or `(Bsz, G, N)`; D, dt_bias: `(D,)` or None.
        dt_softplus: apply softplus (identity above 20) to dt + dt_bias.

    Returns:
        `(Bsz, D)` output in x's dtype.
    """
    bsz, dim = x.shape
    n = A.shape[1]
    x, dt, A, D, z, dt_bias = (None if t is None else t.contiguous() for t in (x, dt, A, D, z, dt_bias))
    out = torch.empty_like(x)
    block_d = max(2, min(STEP_BLOCK_D, triton.next_power_of_2(dim)))
    n_pad = max(2, triton.next_power_of_2(n))
    _state_update_kernel[(triton.cdiv(dim, block_d), bsz)](
        state, x, dt, A, B, C, x if D is None else D, x if z is None else z,
        x if dt_bias is None else dt_bias, out,
        dim, n, *state.stride(), *_bc_step_layout(B, dim), *_bc_step_layout(C, dim),
        BLOCK_D=block_d, N_PAD=n_pad, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        num_warps=max(1, min(4, block_d * n_pad // 128)),
    )
    return out
