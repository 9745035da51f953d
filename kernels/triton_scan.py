"""Triton selective scan: the "tile-sequential" kernel of samba-asr.md §6.3.

Design:
    * Grid ``(Bsz, programs)``. Channels are cut into *segments* of ``seg`` channels that share one
      B group and one C group (``seg = gcd`` of the two groups' sizes; time-invariant B/C do not
      constrain it), and each segment into blocks of ``block_d <= BLOCK_D`` channels. One program owns
      (batch b, one block) and keeps a ``[block_d, N_PAD]`` float32 state tile in registers (N padded
      to a power of two and masked).
    * Forward: a sequential loop over t. Δ = softplus(delta + bias) (identity above 20) times the
      mask, ā = exp2(Δ·A·log2 e), h = ā·h + Δ·u·B, y = Σ_n C·h + D·u, out = y·silu(z). The state
      entering every ``CHUNK`` steps is stored: checkpoints `(Bsz, D, ceil(L/CHUNK), N)`.
    * Backward: chunks in reverse. Each program recomputes its chunk's states from the checkpoint
      into a private scratch slice of global memory, `(CHUNK + 1, block_d, N_PAD)` per program
      (slot 0 = the checkpoint, slot k = h[t0 + k - 1]), then walks the chunk backwards reading the
      slots by reversed index (no reverse ``associative_scan``, Triton #4362):
      dh[t] = C[t]·gy[t] + ā[t+1]·dh[t+1], seeded by the gradient of the last state (samba-asr.md §2.1).
    * Reductions are deterministic, without atomics: a program writes its own partial sums (dB/dC per
      time step when B/C vary in time, per channel otherwise; dA, dD, d delta_bias per channel and
      batch) and PyTorch sums them.

There is no associative combine anywhere (the time loop is sequential inside a program), so the
combine-order pitfall of Triton #2359 does not apply. Shapes follow the legend of ``kernels._common``.
``import triton`` happens here only; the dispatcher imports this module lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .triton_step import _delta_step, selective_state_update

__all__ = ["BLOCK_D", "CHUNK", "backward", "forward", "selective_state_update"]

CHUNK = 64  # checkpoint interval along L; the backward scratch is (CHUNK + 1) state tiles per program
BLOCK_D = 8  # most channels per program (tunable; benchmarks/gpu_check.py sweeps it)
POISON = False  # tests set this: every buffer the kernels should fully write starts as NaN
_LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x·log2 e)


def _empty(shape, dtype, device) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if POISON else t


def _bc_layout(x: torch.Tensor, dim: int) -> tuple[tuple[int, int, int, int], int, int]:
    """Strides (batch, group, n, t), channels per group index, and the segment size x allows."""
    if x.dim() == 2:  # (D, N): the "group" is the channel itself, nothing varies with b or t
        return (0, x.stride(0), x.stride(1), 0), 1, dim
    if x.dim() == 3:  # (Bsz, N, L): one group for all channels
        return (x.stride(0), 0, x.stride(1), x.stride(2)), dim, dim
    cpg = dim // x.shape[1]
    return (x.stride(0), x.stride(1), x.stride(2), x.stride(3)), cpg, cpg


def _launch_geometry(dim: int, n: int, B: torch.Tensor, C: torch.Tensor) -> dict:
    b_strides, b_cpg, b_seg = _bc_layout(B, dim)
    c_strides, c_cpg, c_seg = _bc_layout(C, dim)
    seg = math.gcd(b_seg, c_seg)
    # Sizes of at least 2 keep every tl.arange comfortably legal; the padding is masked.
    block_d = max(2, min(BLOCK_D, triton.next_power_of_2(seg)))
    n_pad = max(2, triton.next_power_of_2(n))
    nblk = triton.cdiv(seg, block_d)
    return dict(
        seg=seg, nblk=nblk, nprog=(dim // seg) * nblk, block_d=block_d, n_pad=n_pad,
        num_warps=max(1, min(8, block_d * n_pad // 128)),
        bc_args=(*b_strides, b_cpg, *c_strides, c_cpg),
    )


@triton.jit
def _program_tiles(pid, nblk, seg, n, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr):
    """Channels `[BLOCK_D]` (int32), their validity, the state index `[N_PAD]`, the tile mask, the
    segment's first channel, and the `(D, N)` offsets `[BLOCK_D, N_PAD]` of the tile."""
    seg0 = (pid // nblk) * seg
    ci = (pid % nblk) * BLOCK_D + tl.arange(0, BLOCK_D)  # index inside the segment
    dmask = ci < seg
    d = seg0 + ci
    offn = tl.arange(0, N_PAD)
    m2 = dmask[:, None] & (offn < n)[None, :]
    return d, dmask, offn, m2, seg0, d[:, None] * n + offn[None, :]


@triton.jit
def _bc_setup(ptr, b, seg0, d, offn, m2, s_b, s_g, s_n, cpg, VARY: tl.constexpr):
    """A B/C operand: (scalar base pointer of this program's group, whole tile if time-invariant).

    Time-varying B/C are the same for every channel of a segment, so the loop loads one `[N_PAD]`
    vector per step from the base; a time-invariant `(D, N)` operand is loaded once as a tile.
    """
    if VARY:
        return ptr + b * s_b + (seg0 // cpg) * s_g, tl.zeros([1, 1], dtype=tl.float32)
    else:
        return ptr, tl.load(ptr + d[:, None] * s_g + offn[None, :] * s_n, mask=m2, other=0.0).to(tl.float32)


@triton.jit
def _bc_at(base, tile, offn, nmask, t, s_n, s_t, VARY: tl.constexpr):
    """The operand at step t: `[1, N_PAD]` (time-varying) or the `[BLOCK_D, N_PAD]` tile."""
    if VARY:
        return tl.load(base + offn * s_n + t * s_t, mask=nmask, other=0.0).to(tl.float32)[None, :]
    else:
        return tile


@triton.jit
def _step_inputs(u_ptr, dl_ptr, mask_ptr, row, t, dmask, bias, HAS_MASK: tl.constexpr,
                 SOFTPLUS: tl.constexpr):
    """u_t, Δ_t (bias, softplus, mask) and dΔ_t/d delta_t for a block of channels: `[BLOCK_D]` each."""
    u = tl.load(u_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
    x = tl.load(dl_ptr + row + t, mask=dmask, other=0.0).to(tl.float32) + bias
    mk = 1.0
    if HAS_MASK:
        mk = tl.load(mask_ptr + t).to(tl.float32)
    dt, ddt_dx = _delta_step(x, mk, SOFTPLUS)
    return u, dt, ddt_dx


@triton.jit
def _fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, Dsk_ptr, z_ptr, bias_ptr, h0_ptr, mask_ptr,
    out_ptr, last_ptr, ck_ptr,
    dim, L, n, n_chunks, seg, nblk,
    sb_b, sb_g, sb_n, sb_t, cpg_b, sc_b, sc_g, sc_n, sc_t, cpg_c,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_MASK: tl.constexpr, SOFTPLUS: tl.constexpr, B_VARY: tl.constexpr, C_VARY: tl.constexpr,
):
    # Per-program offsets go into scalar int64 base pointers, so the vector offsets stay int32.
    b = tl.program_id(0).to(tl.int64)
    d, dmask, offn, m2, seg0, dn = _program_tiles(tl.program_id(1), nblk, seg, n, BLOCK_D, N_PAD)
    nmask = offn < n
    A = tl.load(A_ptr + dn, mask=m2, other=0.0).to(tl.float32)
    Bb, Btile = _bc_setup(B_ptr, b, seg0, d, offn, m2, sb_b, sb_g, sb_n, cpg_b, B_VARY)
    Cb, Ctile = _bc_setup(C_ptr, b, seg0, d, offn, m2, sc_b, sc_g, sc_n, cpg_c, C_VARY)
    u_ptr += b * dim * L
    dl_ptr += b * dim * L
    z_ptr += b * dim * L
    out_ptr += b * dim * L
    mask_ptr += b * L
    ck_ptr += b * dim * n_chunks * n
    row = d * L
    if HAS_H0:
        h = tl.load(h0_ptr + b * dim * n + dn, mask=m2, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(Dsk_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    for t in range(0, L):
        if t % CHUNK == 0:
            tl.store(ck_ptr + d[:, None] * (n_chunks * n) + (t // CHUNK) * n + offn[None, :], h, mask=m2)
        u, dt, _ = _step_inputs(u_ptr, dl_ptr, mask_ptr, row, t, dmask, bias, HAS_MASK, SOFTPLUS)
        Bt = _bc_at(Bb, Btile, offn, nmask, t, sb_n, sb_t, B_VARY)
        Ct = _bc_at(Cb, Ctile, offn, nmask, t, sc_n, sc_t, C_VARY)
        h = tl.exp2((dt * _LOG2E)[:, None] * A) * h + (dt * u)[:, None] * Bt
        y = tl.sum(h * Ct, axis=1)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            zz = tl.load(z_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=dmask)
    tl.store(last_ptr + b * dim * n + dn, h, mask=m2)


@triton.jit
def _bwd_kernel(
    gout_ptr, glast_ptr, u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, Dsk_ptr, z_ptr, bias_ptr, mask_ptr,
    ck_ptr, scr_ptr,
    du_ptr, ddl_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    dim, L, n, n_chunks, seg, nblk, nprog,
    sb_b, sb_g, sb_n, sb_t, cpg_b, sc_b, sc_g, sc_n, sc_t, cpg_c,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_MASK: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_GLAST: tl.constexpr,
    B_VARY: tl.constexpr, C_VARY: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    d, dmask, offn, m2, seg0, dn = _program_tiles(pid, nblk, seg, n, BLOCK_D, N_PAD)
    nmask = offn < n
    A = tl.load(A_ptr + dn, mask=m2, other=0.0).to(tl.float32)
    Bb, Btile = _bc_setup(B_ptr, b, seg0, d, offn, m2, sb_b, sb_g, sb_n, cpg_b, B_VARY)
    Cb, Ctile = _bc_setup(C_ptr, b, seg0, d, offn, m2, sc_b, sc_g, sc_n, cpg_c, C_VARY)
    for_row = b * dim * L
    gout_ptr += for_row
    u_ptr += for_row
    dl_ptr += for_row
    z_ptr += for_row
    du_ptr += for_row
    ddl_ptr += for_row
    dz_ptr += for_row
    mask_ptr += b * L
    ck_ptr += b * dim * n_chunks * n
    if B_VARY:  # this program's row of the per-step partials
        dB_ptr += (b * nprog + pid) * L * n
    if C_VARY:
        dC_ptr += (b * nprog + pid) * L * n
    scr_ptr += (b * nprog + pid) * ((CHUNK + 1) * BLOCK_D * N_PAD)
    tile = tl.arange(0, BLOCK_D)[:, None] * N_PAD + offn[None, :]
    row = d * L
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(Dsk_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    dh_c = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)  # carry: ā[t+1]·dh[t+1]
    if HAS_GLAST:
        dh_c = tl.load(glast_ptr + b * dim * n + dn, mask=m2, other=0.0).to(tl.float32)
    dA_acc = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
    if not B_VARY:
        dB_acc = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
    if not C_VARY:
        dC_acc = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t0 = c * CHUNK
        nt = tl.minimum(L - t0, CHUNK)
        # 1) recompute the chunk's states from its checkpoint into the scratch slots
        h = tl.load(ck_ptr + d[:, None] * (n_chunks * n) + c * n + offn[None, :], mask=m2, other=0.0)
        tl.store(scr_ptr + tile, h)
        for k in range(0, nt):
            t = t0 + k
            u, dt, _ = _step_inputs(u_ptr, dl_ptr, mask_ptr, row, t, dmask, bias, HAS_MASK, SOFTPLUS)
            Bt = _bc_at(Bb, Btile, offn, nmask, t, sb_n, sb_t, B_VARY)
            h = tl.exp2((dt * _LOG2E)[:, None] * A) * h + (dt * u)[:, None] * Bt
            tl.store(scr_ptr + (k + 1) * (BLOCK_D * N_PAD) + tile, h)
        # Scratch written by one thread may be read by another: make it visible CTA-wide.
        tl.debug_barrier()
        # 2) walk the chunk backwards; h holds h[t], slot k holds h[t-1]
        for kk in range(0, nt):
            k = nt - 1 - kk
            t = t0 + k
            h_prev = tl.load(scr_ptr + k * (BLOCK_D * N_PAD) + tile)
            u, dt, ddt_dx = _step_inputs(u_ptr, dl_ptr, mask_ptr, row, t, dmask, bias, HAS_MASK, SOFTPLUS)
            Bt = _bc_at(Bb, Btile, offn, nmask, t, sb_n, sb_t, B_VARY)
            Ct = _bc_at(Cb, Ctile, offn, nmask, t, sc_n, sc_t, C_VARY)
            g = tl.load(gout_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            gy = g
            if HAS_Z:
                zz = tl.load(z_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
                sz = tl.sigmoid(zz)
                gy = g * zz * sz
                y = tl.sum(h * Ct, axis=1) + Dv * u  # pre-gate output
                dz = g * y * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz_ptr + row + t, dz.to(dz_ptr.dtype.element_ty), mask=dmask)
            a = tl.exp2((dt * _LOG2E)[:, None] * A)
            dh = Ct * gy[:, None] + dh_c
            ah = a * h_prev  # = h[t] - b̄[t], the decayed part of the state
            dtu = dt * u
            if C_VARY:
                tl.store(dC_ptr + t * n + offn, tl.sum(h * gy[:, None], axis=0), mask=nmask)
            else:
                dC_acc += h * gy[:, None]
            if B_VARY:
                tl.store(dB_ptr + t * n + offn, tl.sum(dh * dtu[:, None], axis=0), mask=nmask)
            else:
                dB_acc += dh * dtu[:, None]
            du = tl.sum(dh * Bt, axis=1) * dt + Dv * gy
            ddt = tl.sum(dh * (Bt * u[:, None] + A * ah), axis=1)  # dℓ/dΔ
            dA_acc += dh * ah * dt[:, None]
            dD_acc += gy * u
            # through mask and softplus to delta + bias; a padded step (factor 0) gives exactly 0 even
            # when ddt overflowed, e.g. for a huge |A| with ā = 1
            dx = tl.where(ddt_dx == 0.0, 0.0, ddt * ddt_dx)
            db_acc += dx
            tl.store(du_ptr + row + t, du.to(du_ptr.dtype.element_ty), mask=dmask)
            tl.store(ddl_ptr + row + t, dx.to(ddl_ptr.dtype.element_ty), mask=dmask)
            dh_c = a * dh
            h = h_prev
        tl.debug_barrier()  # the next chunk overwrites the scratch
    sdn = b * dim * n + dn
    if HAS_H0:
        tl.store(dh0_ptr + sdn, dh_c, mask=m2)  # dh0 = ā[0]·dh[0]
    tl.store(dA_ptr + sdn, dA_acc, mask=m2)
    if not B_VARY:
        tl.store(dB_ptr + sdn, dB_acc, mask=m2)
    if not C_VARY:
        tl.store(dC_ptr + sdn, dC_acc, mask=m2)
    tl.store(dD_ptr + b * dim + d, dD_acc, mask=dmask)
    tl.store(dbias_ptr + b * dim + d, db_acc, mask=dmask)


def _flags(D, z, delta_bias, initial_state, mask, delta_softplus) -> dict:
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                HAS_H0=initial_state is not None, HAS_MASK=mask is not None, SOFTPLUS=bool(delta_softplus))


def _contiguous(*xs: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The kernels index these densely; B and C instead go in with their strides."""
    return [None if x is None else x.contiguous() for x in xs]


def _or(x: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    """Triton needs a pointer even for an absent operand; the kernel never reads it."""
    return dummy if x is None else x


def forward(u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus: bool,
            *, chunk: int | None = None):
    """Selective scan forward.

    Args:
        u, delta, z: `(Bsz, D, L)`; A: `(D, N)`; B, C: `(Bsz, N, L)`, `(Bsz, G, N, L)` or `(D, N)`;
            D, delta_bias: `(D,)`; initial_state: `(Bsz, D, N)`; mask: `(Bsz, L)` bool. Optional ones
            may be None. Already validated by ``check_scan_args``.
        delta_softplus: apply softplus (identity above 20) to delta + delta_bias.
        chunk: checkpoint interval; defaults to the module's ``CHUNK`` (tests override it).

    Returns:
        out `(Bsz, D, L)` in u's dtype, last state `(Bsz, D, N)` float32, checkpoints
        `(Bsz, D, ceil(L/chunk), N)` float32 where entry c is the state entering chunk c, and an
        empty y_pre (the ops' fourth output: this backward recomputes y from the states).
    """
    chunk = chunk or CHUNK
    bsz, dim, length = u.shape
    n = A.shape[1]
    u, delta, A, D, z, delta_bias, initial_state, mask = _contiguous(
        u, delta, A, D, z, delta_bias, initial_state, mask)
    n_chunks = triton.cdiv(length, chunk)
    out = _empty((bsz, dim, length), u.dtype, u.device)
    last = _empty((bsz, dim, n), torch.float32, u.device)
    ck = _empty((bsz, dim, n_chunks, n), torch.float32, u.device)
    no_y = _empty((0,), torch.float32, u.device)
    if length == 0:
        last.copy_(initial_state if initial_state is not None else torch.zeros_like(last))
        return out, last, ck, no_y
    geo = _launch_geometry(dim, n, B, C)
    _fwd_kernel[(bsz, geo["nprog"])](
        u, delta, A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), _or(initial_state, u), _or(mask, u),
        out, last, ck,
        dim, length, n, n_chunks, geo["seg"], geo["nblk"], *geo["bc_args"],
        CHUNK=chunk, BLOCK_D=geo["block_d"], N_PAD=geo["n_pad"], B_VARY=B.dim() > 2, C_VARY=C.dim() > 2,
        **_flags(D, z, delta_bias, initial_state, mask, delta_softplus), num_warps=geo["num_warps"],
    )
    return out, last, ck, no_y


def _reduce_bc(partial: torch.Tensor, X: torch.Tensor, bsz: int, dim: int, seg: int) -> torch.Tensor:
    """Sum dB/dC partials (deterministically) into X's layout and dtype.

    partial: `(Bsz, D//seg * nblk, L, N)` for time-varying X, `(Bsz, D, N)` for time-invariant X.
    """
    if X.dim() == 2:
        return partial.sum(0).to(X.dtype)
    length, n = partial.shape[-2:]
    per_seg = partial.view(bsz, dim // seg, -1, length, n).sum(2)  # (Bsz, D//seg, L, N)
    groups = 1 if X.dim() == 3 else X.shape[1]
    grad = per_seg.view(bsz, groups, -1, length, n).sum(2).transpose(-1, -2)  # (Bsz, G, N, L)
    return (grad[:, 0] if X.dim() == 3 else grad).to(X.dtype)


def backward(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, initial_state, mask,
             delta_softplus: bool, checkpoints, y_pre=None, *, chunk: int | None = None):
    """Selective scan backward from the forward's checkpoints (recomputes states chunk by chunk).

    Args:
        grad_out: `(Bsz, D, L)` gradient of out.
        grad_last_state: `(Bsz, D, N)` gradient of the last state, or None (zeros).
        u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus: as in ``forward``.
        checkpoints: `(Bsz, D, ceil(L/chunk), N)` float32 from ``forward`` with the same chunk.
        y_pre: unused (accepted for the ops' common signature; y is recomputed from the states).
        chunk: checkpoint interval used by the forward; defaults to ``CHUNK``.

    Returns:
        (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0), each shaped and typed like its input; None
        where the input (D, z, delta_bias, initial_state) was None. ddelta is w.r.t. the raw delta.
    """
    chunk = chunk or CHUNK
    bsz, dim, length = u.shape
    n = A.shape[1]
    n_chunks = triton.cdiv(length, chunk)
    if tuple(checkpoints.shape) != (bsz, dim, n_chunks, n):
        raise ValueError(f"triton_scan.backward: checkpoints have shape {tuple(checkpoints.shape)}, but "
                         f"chunk={chunk} needs {(bsz, dim, n_chunks, n)}")
    u, delta, A, D, z, delta_bias, mask, grad_out, grad_last_state = _contiguous(
        u, delta, A, D, z, delta_bias, mask, grad_out, grad_last_state)
    dev, f32 = u.device, torch.float32
    geo = _launch_geometry(dim, n, B, C)
    nprog, b_vary, c_vary = geo["nprog"], B.dim() > 2, C.dim() > 2
    du, ddelta = _empty(u.shape, u.dtype, dev), _empty(delta.shape, delta.dtype, dev)
    dz = None if z is None else _empty(z.shape, z.dtype, dev)
    dA_p, dh0 = _empty((bsz, dim, n), f32, dev), _empty((bsz, dim, n), f32, dev)
    dB_p = _empty((bsz, nprog, length, n) if b_vary else (bsz, dim, n), f32, dev)
    dC_p = _empty((bsz, nprog, length, n) if c_vary else (bsz, dim, n), f32, dev)
    dD_p, dbias_p = _empty((bsz, dim), f32, dev), _empty((bsz, dim), f32, dev)
    scratch = _empty((bsz, nprog, chunk + 1, geo["block_d"], geo["n_pad"]), f32, dev)
    if length == 0:
        for t in (dA_p, dB_p, dC_p, dD_p, dbias_p):
            t.zero_()
        dh0.copy_(grad_last_state if grad_last_state is not None else torch.zeros_like(dh0))
    else:
        _bwd_kernel[(bsz, nprog)](
            grad_out, _or(grad_last_state, u),
            u, delta, A, B, C, _or(D, u), _or(z, u), _or(delta_bias, u), _or(mask, u),
            checkpoints.contiguous(), scratch,
            du, ddelta, _or(dz, u), dA_p, dB_p, dC_p, dD_p, dbias_p, dh0,
            dim, length, n, n_chunks, geo["seg"], geo["nblk"], nprog, *geo["bc_args"],
            CHUNK=chunk, BLOCK_D=geo["block_d"], N_PAD=geo["n_pad"],
            **_flags(D, z, delta_bias, initial_state, mask, delta_softplus),
            HAS_GLAST=grad_last_state is not None, B_VARY=b_vary, C_VARY=c_vary, num_warps=geo["num_warps"],
        )
    return (
        du, ddelta, dA_p.sum(0).to(A.dtype),
        _reduce_bc(dB_p, B, bsz, dim, geo["seg"]), _reduce_bc(dC_p, C, bsz, dim, geo["seg"]),
        None if D is None else dD_p.sum(0).to(D.dtype), dz,
        None if delta_bias is None else dbias_p.sum(0).to(delta_bias.dtype),
        None if initial_state is None else dh0.to(initial_state.dtype),
    )
