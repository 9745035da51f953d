"""Input builders and comparisons shared by the kernel tests (samba-asr.md §7.1, §13)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from kernels.reference import selective_scan_ref

# Relative-norm gates (samba-asr.md §13) and allclose tolerances (§7.1) per input dtype.
GATES = {torch.float32: (1e-5, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1e-2, 1e-2),
         torch.float64: (1e-12, 1e-10)}
TOLS = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2),
        torch.float64: (1e-10, 1e-10)}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
# Looser allclose for gradients that accumulate over many terms (samba-asr.md §13.1, K2).
GRAD_SCALE = {"u": 2.0, "delta": 10.0, "A": 5.0, "D": 5.0, "delta_bias": 5.0}


@dataclass
class ScanCase:
    """One set of scan inputs; optional ones are None when switched off."""

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None = None
    z: torch.Tensor | None = None
    delta_bias: torch.Tensor | None = None
    initial_state: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    delta_softplus: bool = False
    seed: int = 0

    def tensors(self) -> tuple:
        return (self.u, self.delta, self.A, self.B, self.C, self.D, self.z, self.delta_bias,
                self.initial_state)


def make_case(seed: int = 0, bsz: int = 2, dim: int = 4, dstate: int = 8, length: int = 16, *,
              dtype: torch.dtype = torch.float32, bc: str = "var", D: bool = True, z: bool = True,
              bias: bool = True, h0: bool = False, mask: bool = False) -> ScanCase:
    """Inputs drawn as in samba-asr.md §7.1: A = −0.5·U(0,1), Δ = 0.5·U(0,1), bias = 0.5·U(0,1),
    B, C, u, z ~ N(0,1). ``bc`` is ``var`` `(Bsz,N,L)`, ``group`` `(Bsz,2,N,L)` or ``inv`` `(D,N)`.
    Weights (A, D, delta_bias) stay float32/float64; sequences take ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    wt = torch.float64 if dtype == torch.float64 else torch.float32

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dt)

    def rand(*shape, dt=dtype):
        return torch.rand(*shape, generator=g, dtype=torch.float64).to(dt)

    bc_shape = {"var": (bsz, dstate, length), "group": (bsz, 2, dstate, length), "inv": (dim, dstate)}[bc]
    m = None
    if mask:
        lengths = torch.randint(1, length + 1, (bsz,), generator=g)
        lengths[0] = length
        m = torch.arange(length)[None, :] < lengths[:, None]
    return ScanCase(
        u=randn(bsz, dim, length), delta=0.5 * rand(bsz, dim, length), A=-0.5 * rand(dim, dstate, dt=wt),
        B=randn(*bc_shape), C=randn(*bc_shape), D=randn(dim, dt=wt) if D else None,
        z=randn(bsz, dim, length) if z else None, delta_bias=0.5 * rand(dim, dt=wt) if bias else None,
        initial_state=randn(bsz, dim, dstate, dt=wt) if h0 else None, mask=m, delta_softplus=bias,
        seed=seed,
    )


def run_scan(case: ScanCase, backend: str, grad_seed: int | None = 0):
    """Forward (and backward with random output/state gradients when grad_seed is not None).

    Returns:
        (out, last_state, {name: gradient}) with gradients only for inputs that are present.
    """
    ts = [None if t is None else t.detach().clone().requires_grad_(grad_seed is not None)
          for t in case.tensors()]
    if backend == "oracle":
        ts = [None if t is None else t.detach().double().requires_grad_(grad_seed is not None)
              for t in case.tensors()]
        out, last = selective_scan_ref(*ts[:8], case.delta_softplus, ts[8], case.mask)
    else:
        args = (*ts[:8], case.delta_softplus, ts[8], case.mask)
        out, last = kernels.selective_scan(*args, return_last_state=True, backend=backend)
    grads = {}
    if grad_seed is not None:
        g = torch.Generator().manual_seed(1000 + grad_seed)
        # Rounded to the input dtype first, so the oracle sees exactly the gradient the backend sees.
        g_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(case.u.dtype)
        g_last = torch.randn(last.shape, generator=g, dtype=torch.float64)
        torch.autograd.backward([out, last], [g_out.to(out.dtype), g_last.to(last.dtype)])
        grads = {n: t.grad for n, t in zip(GRAD_NAMES, ts, strict=True) if t is not None}
    return out.detach(), last.detach(), grads


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """‖x − ref‖ / ‖ref‖ in float64 (0 when both are zero)."""
    x, ref = x.double(), ref.double()
    den = ref.norm().item()
    return (x - ref).norm().item() / den if den > 0 else (x - ref).norm().item()


def assert_matches(name: str, got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, *,
                   grad: bool = False, scale: float = 1.0, seed: int = 0) -> None:
    """Shape, finiteness, §7.1 allclose and the §13 relative-norm gate, with the seed on failure."""
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)} (seed {seed})"
    assert torch.isfinite(got).all(), f"{name}: non-finite values (seed {seed})"
    gate = GATES[dtype][1 if grad else 0]
    err = rel_err(got, ref)
    assert err <= gate, f"{name}: relative-norm error {err:.3g} > {gate:.1g} (seed {seed})"
    rtol, atol = TOLS[dtype]
    torch.testing.assert_close(got.double(), ref.double(), rtol=rtol * scale, atol=atol * scale,
                               msg=lambda m: f"{name} (seed {seed}, rel-norm {err:.3g}): {m}")
