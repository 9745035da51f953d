"""Argument checking and small helpers shared by every selective-scan backend.

Shape legend (channel-first, as in the Mamba reference implementation):

    Bsz  batch             D  channels (expand * d_model)
    L    time steps        N  state size (d_state)
    G    groups of channels sharing one B/C (D % G == 0)

    u, delta, z      (Bsz, D, L)
    A                (D, N)             real; negative for a stable scan
    B, C             (Bsz, N, L)        time-varying ("selective"), one group
                     (Bsz, G, N, L)     time-varying, G groups of D // G channels
                     (D, N)             time-invariant (S4-style)
    D (skip)         (D,)
    delta_bias       (D,)
    initial_state    (Bsz, D, N)
    mask             (Bsz, L) bool      False marks a padded step
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_scan_args", "compute_dtype", "effective_delta", "per_channel"]

# Above this argument softplus is the identity (as in the Mamba kernels and F.softplus).
SOFTPLUS_THRESHOLD = 20.0


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """float64 inputs run in float64; every other dtype runs (and keeps its state) in float32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _bc_ok(x: torch.Tensor, bsz: int, dim: int, n: int, length: int) -> bool:
    if x.dim() == 2:
        return tuple(x.shape) == (dim, n)
    if x.dim() == 3:
        return tuple(x.shape) == (bsz, n, length)
    if x.dim() == 4:
        g = x.shape[1]
        return g > 0 and dim % g == 0 and tuple(x.shape) == (bsz, g, n, length)
    return False


def check_scan_args(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> None:
    """Validate shapes, devices and dtypes; raise ``ValueError`` naming the offending argument."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got shape {tuple(u.shape)}")
    bsz, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, dstate), got shape {tuple(A.shape)}")
    n = A.shape[1]
    expect = {
        "delta": (delta, (bsz, dim, length)),
        "z": (z, (bsz, dim, length)),
        "D": (D, (dim,)),
        "delta_bias": (delta_bias, (dim,)),
        "initial_state": (initial_state, (bsz, dim, n)),
        "mask": (mask, (bsz, length)),
    }
    for name, (t, shape) in expect.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(t.shape)}")
    for name, t in (("B", B), ("C", C)):
        if not _bc_ok(t, bsz, dim, n, length):
            raise ValueError(
                f"selective_scan: {name} must be ({bsz}, {n}, {length}), ({bsz}, G, {n}, {length}) with "
                f"{dim} % G == 0, or ({dim}, {n}); got {tuple(t.shape)}"
            )
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
               "delta_bias": delta_bias, "initial_state": initial_state, "mask": mask}
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")
        if name == "mask":
            if t.dtype != torch.bool:
                raise ValueError(f"selective_scan: mask must be a bool tensor, got {t.dtype}")
        elif not t.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")


def effective_delta(
    delta: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The step size the recurrence uses: softplus(delta + bias), zeroed at padded steps.

    A zero step gives ā = exp(0·A) = 1 and b̄ = 0·B·u = 0, so a padded step leaves the state untouched.

    Args:
        delta: `(Bsz, D, L)` in the compute dtype.
        delta_bias: `(D,)` or None.
        delta_softplus: apply softplus (identity above 20).
        mask: `(Bsz, L)` bool or None.

    Returns:
        `(Bsz, D, L)` step sizes.
    """
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta, beta=1.0, threshold=SOFTPLUS_THRESHOLD)
    if mask is not None:
        delta = delta * mask[:, None, :].to(delta.dtype)
    return delta


def per_channel(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Broadcast B or C to one (N, L) matrix per channel.

    Args:
        x: `(D, N)`, `(Bsz, N, L)` or `(Bsz, G, N, L)`.
        dim: the number of channels D.

    Returns:
        A tensor broadcastable to `(Bsz, D, N, L)`: `(1, D, N, 1)`, `(Bsz, 1, N, L)` or `(Bsz, D, N, L)`.
    """
    if x.dim() == 2:
        return x[None, :, :, None]
    if x.dim() == 3:
        return x[:, None]
    return x.repeat_interleave(dim // x.shape[1], dim=1)
