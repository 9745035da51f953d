"""The sequential selective scan: the specification every other backend is tested against.

Selective SSM (Mamba-1, "S6"; Gu & Dao 2023, arXiv 2312.00752), per channel d and state n:

    Δ_t     = softplus(delta_t + delta_bias)       (when delta_softplus; 0 at masked steps)
    ā_t     = exp(Δ_t · A)                         zero-order hold for A
    b̄_t     = Δ_t · B_t · u_t                      Euler step for B, as the Mamba kernels do
    h_t     = ā_t · h_{t-1} + b̄_t                  h_{-1} = initial_state (zeros by default)
    y_t     = Σ_n C_t · h_t + D · u_t
    out_t   = y_t · silu(z_t)                      when z is given

Shapes follow the legend of ``kernels._common``: u, delta, z `(Bsz, D, L)`; A `(D, N)`; B, C
`(Bsz, N, L)`, `(Bsz, G, N, L)` or `(D, N)`; state `(Bsz, D, N)`. Computation runs in float64 when
u is float64 (the oracle for tests and gradcheck) and in float32 otherwise; gradients come from
autograd through the Python loop over L, so this backend is slow and memory-hungry by design.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import compute_dtype, effective_delta, per_channel

__all__ = ["selective_scan_ref", "selective_state_update_ref"]


def selective_scan_ref(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the recurrence one step at a time.

    Args:
        u: `(Bsz, D, L)` input.
        delta: `(Bsz, D, L)` raw step size.
        A: `(D, N)` state matrix (diagonal per channel).
        B: `(Bsz, N, L)`, `(Bsz, G, N, L)` or `(D, N)` input matrix.
        C: same layouts as B; output matrix.
        D: `(D,)` skip weight, or None.
        z: `(Bsz, D, L)` gate, or None.
        delta_bias: `(D,)` added to delta before the softplus, or None.
        delta_softplus: apply softplus to delta (+ bias).
        initial_state: `(Bsz, D, N)` state before step 0, or None for zeros.
        mask: `(Bsz, L)` bool, False at padded steps (Δ = 0 there), or None.

    Returns:
        out `(Bsz, D, L)` in u's dtype, and the last state `(Bsz, D, N)` in the compute dtype.
    """
    ct = compute_dtype(u)
    bsz, dim, length = u.shape
    u_c, A_c = u.to(ct), A.to(ct)
    dt = effective_delta(delta.to(ct), delta_bias, delta_softplus, mask)  # (Bsz, D, L)
    Bc = per_channel(B.to(ct), dim)  # broadcastable to (Bsz, D, N, L)
    Cc = per_channel(C.to(ct), dim)
    n = A.shape[1]
    h = u_c.new_zeros(bsz, dim, n) if initial_state is None else initial_state.to(ct)
    # unbind (not indexing in the loop) so autograd's backward does not build a full-size zero
    # tensor per step.
    a_steps = torch.exp(dt[..., None] * A_c[:, None, :]).unbind(2)  # L x (Bsz, D, N)
    bu_steps = (dt * u_c).unbind(2)  # L x (Bsz, D)
    B_steps = _steps(Bc, length)  # L x (Bsz|1, D|1, N)
    C_steps = _steps(Cc, length)
    ys = []
    for t in range(length):
        h = a_steps[t] * h + bu_steps[t][..., None] * B_steps[t]  # (Bsz, D, N)
        ys.append((h * C_steps[t]).sum(-1))  # (Bsz, D)
    y = torch.stack(ys, dim=-1) if ys else u_c.new_zeros(bsz, dim, 0)  # (Bsz, D, L)
    if D is not None:
        y = y + D.to(ct)[:, None] * u_c
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(u.dtype), h


def _steps(x: torch.Tensor, length: int) -> list[torch.Tensor]:
    """Split a per-channel B or C `(…, N, L|1)` into L per-step `(…, N)` tensors."""
    if x.shape[-1] == 1:
        return [x[..., 0]] * length
    return list(x.unbind(-1))


def selective_state_update_ref(
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
    """One recurrent decoding step; updates ``state`` in place.

    Args:
        state: `(Bsz, D, N)` SSM state, float32 (or float64); overwritten with the new state.
        x: `(Bsz, D)` input at this step.
        dt: `(Bsz, D)` raw step size.
        A: `(D, N)`.
        B: `(Bsz, N)` or `(Bsz, G, N)`.
        C: `(Bsz, N)` or `(Bsz, G, N)`.
        D: `(D,)` or None.
        z: `(Bsz, D)` gate or None.
        dt_bias: `(D,)` or None.
        dt_softplus: apply softplus to dt (+ bias).

    Returns:
        `(Bsz, D)` output in x's dtype.
    """
    ct = state.dtype
    dim = x.shape[1]
    delta = effective_delta(dt.to(ct)[..., None], dt_bias, dt_softplus, None)[..., 0]  # (Bsz, D)
    Bc = B.to(ct) if B.dim() == 2 else B.to(ct).repeat_interleave(dim // B.shape[1], dim=1)
    Cc = C.to(ct) if C.dim() == 2 else C.to(ct).repeat_interleave(dim // C.shape[1], dim=1)
    if Bc.dim() == 2:
        Bc = Bc[:, None, :]  # (Bsz, 1, N)
    if Cc.dim() == 2:
        Cc = Cc[:, None, :]
    x_c = x.to(ct)
    a = torch.exp(delta[..., None] * A.to(ct))  # (Bsz, D, N)
    new_state = a * state + (delta * x_c)[..., None] * Bc
    state.copy_(new_state)
    y = (new_state * Cc).sum(-1)  # (Bsz, D)
    if D is not None:
        y = y + D.to(ct) * x_c
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(x.dtype)
