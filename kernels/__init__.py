"""Selective-scan kernels for the Mamba blocks of Samba-ASR.

Public API (channel-first layouts, as in the Mamba reference implementation)::

    out = kernels.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)
    out, last = kernels.selective_scan(..., initial_state=h0, mask=mask, return_last_state=True)
    y = kernels.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True)

The backend is chosen in ``kernels.dispatch`` ("auto": Triton for CUDA tensors, the fused C++ kernel
for CPU tensors, the chunked PyTorch scan as the fallback). Importing this package never imports
triton. Maths and shape legend: ``kernels.reference`` and ``kernels._common``.
"""

from __future__ import annotations

import torch

from . import ops
from ._common import check_scan_args
from .chunked import selective_scan_chunked
from .dispatch import BACKENDS, BackendUnavailableError, resolve_backend, triton_module
from .reference import selective_scan_ref, selective_state_update_ref

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
]


def selective_scan(
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
    return_last_state: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t h_t + D u_t, out = y·silu(z).

    Differentiable with respect to every floating-point input. The state is kept in float32 for
    fp32/fp16/bf16 inputs and in float64 for float64 inputs.

    Args:
        u: `(Bsz, D, L)` input.
        delta: `(Bsz, D, L)` raw step size Δ.
        A: `(D, N)` state matrix (diagonal per channel; negative for stability).
        B: `(Bsz, N, L)`, `(Bsz, G, N, L)` (G groups of channels) or `(D, N)` (time-invariant).
        C: same layouts as B.
        D: `(D,)` skip weight, or None.
        z: `(Bsz, D, L)` gate (out = y · silu(z)), or None.
        delta_bias: `(D,)` added to delta before the softplus, or None.
        delta_softplus: Δ = softplus(delta + delta_bias), identity above 20.
        initial_state: `(Bsz, D, N)` state before the first step, or None for zeros.
        mask: `(Bsz, L)` bool, False at padded steps. A padded step has Δ = 0, so it leaves the state
            untouched (ā = 1, b̄ = 0): a padded batch gives the same valid outputs and final states as
            each sequence alone, in either scan direction.
        return_last_state: also return the state after the last step.
        backend: ``"auto"``, ``"reference"``, ``"chunked"``, ``"cpu"`` or ``"triton"``.

    Returns:
        out `(Bsz, D, L)` in u's dtype, or (out, last_state `(Bsz, D, N)` float32/float64).

    Raises:
        ValueError: inconsistent shapes, devices or dtypes; an unknown backend.
        BackendUnavailableError: in strict mode (``RECOGNIZERS_SCAN_STRICT=1``) when the wanted
            backend cannot run.
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, mask)
    name = resolve_backend(backend, u.device, u.dtype)
    args = (u, delta, A, B, C, D, z, delta_bias)
    if name == "reference":
        out, last = selective_scan_ref(*args, delta_softplus, initial_state, mask)
    elif name == "chunked":
        out, last = selective_scan_chunked(*args, delta_softplus, initial_state, mask)
    else:
        out, last, *_ = ops.selective_scan_fwd(*args, initial_state, mask, delta_softplus, name)
    return (out, last) if return_last_state else out


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One recurrent step of the selective scan for decoding; updates ``state`` in place.

    Equivalent to one time step of ``selective_scan`` started from ``state``. CUDA tensors run the
    Triton kernel (when triton imports); everything else runs the PyTorch step of
    ``kernels.reference``, which is already a handful of vectorised operations.

    Args:
        state: `(Bsz, D, N)` float32 (or float64) SSM state, overwritten with the new state.
        x: `(Bsz, D)` input.
        dt: `(Bsz, D)` raw step size.
        A: `(D, N)`.
        B: `(Bsz, N)` or `(Bsz, G, N)`.
        C: `(Bsz, N)` or `(Bsz, G, N)`.
        D: `(D,)` or None.
        z: `(Bsz, D)` gate or None.
        dt_bias: `(D,)` or None.
        dt_softplus: apply softplus to dt + dt_bias.

    Returns:
        `(Bsz, D)` output in x's dtype.

    Raises:
        ValueError: inconsistent shapes.
    """
    _check_step_args(state, x, dt, A, B, C, D, z, dt_bias)
    if state.is_cuda and state.dtype == torch.float32:
        name = resolve_backend("triton", state.device, state.dtype)
        if name == "triton":
            return triton_module().selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def _check_step_args(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    if state.dim() != 3:
        raise ValueError(
            f"selective_state_update: state must be (batch, dim, dstate), got {tuple(state.shape)}")
    if not state.is_floating_point() or state.dtype in (torch.float16, torch.bfloat16):
        raise ValueError(f"selective_state_update: state must be float32 or float64, got {state.dtype}")
    bsz, dim, n = state.shape
    expect = {"x": (x, (bsz, dim)), "dt": (dt, (bsz, dim)), "A": (A, (dim, n)), "D": (D, (dim,)),
              "z": (z, (bsz, dim)), "dt_bias": (dt_bias, (dim,))}
    for name, (t, shape) in expect.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_state_update: {name} must have shape {shape}, got {tuple(t.shape)}")
    for name, t in (("B", B), ("C", C)):
        ok = (t.dim() == 2 and tuple(t.shape) == (bsz, n)) or (
            t.dim() == 3 and t.shape[0] == bsz and t.shape[2] == n and dim % t.shape[1] == 0)
        if not ok:
            raise ValueError(f"selective_state_update: {name} must be ({bsz}, {n}) or ({bsz}, G, {n}) "
                             f"with {dim} % G == 0, got {tuple(t.shape)}")
