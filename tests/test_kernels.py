"""Every CPU backend against the float64 sequential oracle (samba-asr.md §13.1: K1, K2, K3, K4, K5)."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import cpu
from kernels.reference import selective_scan_ref
from tests.scan_utils import GRAD_SCALE, assert_matches, make_case, run_scan

BACKENDS = ["reference", "chunked", "cpu"]

# (length, dstate, B/C layout, D, z, bias+softplus, initial_state, mask): every option on and off,
# odd lengths, lengths around the fused kernel's chunk of 64, N in {1, 4, 8, 16, 32}.
GRID = [
    (1, 4, "var", True, True, True, True, True),
    (7, 1, "var", False, False, False, False, False),
    (7, 16, "group", True, False, True, False, True),
    (37, 4, "inv", False, True, False, True, False),
    (64, 16, "inv", True, True, True, True, True),
    (65, 16, "var", True, True, True, True, True),
    (128, 16, "group", False, True, True, False, False),
    (129, 8, "var", True, False, False, True, True),
    (200, 32, "var", True, True, True, True, False),
    (400, 4, "group", True, True, True, False, True),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("length", "dstate", "bc", "D", "z", "bias", "h0", "mask"), GRID)
def test_fp32_forward_and_gradients_match_oracle(backend, length, dstate, bc, D, z, bias, h0, mask):
    seed = length * 31 + dstate
    case = make_case(seed, dstate=dstate, length=length, dim=6 if bc == "group" else 4, bc=bc, D=D, z=z,
                     bias=bias, h0=h0, mask=mask)
    out, last, grads = run_scan(case, backend, grad_seed=seed)
    ref_out, ref_last, ref_grads = run_scan(case, "oracle", grad_seed=seed)
    assert out.dtype == torch.float32
    assert last.dtype == torch.float32
    assert_matches("out", out, ref_out, torch.float32, seed=seed)
    assert_matches("last_state", last, ref_last, torch.float32, seed=seed)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert g.dtype == getattr(case, name).dtype, name
        assert_matches(f"d{name}", g, ref_grads[name], torch.float32, grad=True,
                       scale=GRAD_SCALE.get(name, 1.0), seed=seed)


# The fused kernel's channel-lane path (float32, time-varying B/C, channel groups of 8): dim 16.
LANE_GRID = [
    (1, 16, "var", True, True, True, True, True),
    (9, 1, "var", False, False, False, False, False),
    (63, 4, "group", True, True, True, False, True),
    (65, 16, "var", True, True, True, True, True),
    (130, 32, "group", True, False, True, True, False),
    (257, 16, "var", False, True, False, False, True),
]


@pytest.mark.parametrize(("length", "dstate", "bc", "D", "z", "bias", "h0", "mask"), LANE_GRID)
def test_fused_cpu_lane_path_matches_oracle(length, dstate, bc, D, z, bias, h0, mask):
    seed = 7 * length + dstate
    case = make_case(seed, dstate=dstate, length=length, dim=16, bc=bc, D=D, z=z, bias=bias, h0=h0,
                     mask=mask)
    out, last, grads = run_scan(case, "cpu", grad_seed=seed)
    ref_out, ref_last, ref_grads = run_scan(case, "oracle", grad_seed=seed)
    assert_matches("out", out, ref_out, torch.float32, seed=seed)
    assert_matches("last_state", last, ref_last, torch.float32, seed=seed)
    for name, g in grads.items():
        assert_matches(f"d{name}", g, ref_grads[name], torch.float32, grad=True,
                       scale=GRAD_SCALE.get(name, 1.0), seed=seed)


def test_fused_cpu_lane_path_with_exp_underflow():
    """Δ·A far below the float32 exp range in one lane group (its exps take the clamped path, ā ~ 1e-38
    instead of 0) and in range in the other (the unclamped path): both match the oracle."""
    case = make_case(11, dstate=16, length=70, dim=16, bc="var", D=True, z=True, bias=True, mask=True)
    case.A[:8] = case.A[:8] * 1000.0  # A down to -500: Δ·A < -100 on many steps of channels 0-7
    case.delta[:, :8] = case.delta[:, :8] + 4.0
    out, last, grads = run_scan(case, "cpu", grad_seed=3)
    ref_out, ref_last, ref_grads = run_scan(case, "oracle", grad_seed=3)
    assert_matches("out", out, ref_out, torch.float32)
    assert_matches("last_state", last, ref_last, torch.float32)
    for name, g in grads.items():
        assert_matches(f"d{name}", g, ref_grads[name], torch.float32, grad=True,
                       scale=GRAD_SCALE.get(name, 1.0))


@pytest.mark.parametrize("backend", ["chunked", "cpu"])
def test_long_sequence_default_options(backend):
    case = make_case(7, dim=8, dstate=16, length=4096, D=False, z=False, bias=False)
    out, last, grads = run_scan(case, backend)
    ref_out, ref_last, ref_grads = run_scan(case, "oracle")
    assert_matches("out", out, ref_out, torch.float32)
    assert_matches("last_state", last, ref_last, torch.float32)
    for name, g in grads.items():
        assert_matches(f"d{name}", g, ref_grads[name], torch.float32, grad=True,
                       scale=GRAD_SCALE.get(name, 1))


@pytest.mark.parametrize("backend", ["chunked", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("dstate", "dim"), [(4, 4), (16, 8)])
def test_half_precision_inputs_keep_float32_state(backend, dtype, dstate, dim):
    case = make_case(3, dim=dim, dstate=dstate, length=90, dtype=dtype, h0=True, mask=True)
    out, last, grads = run_scan(case, backend)
    ref_out, ref_last, ref_grads = run_scan(case, "oracle")
    assert out.dtype == dtype
    assert last.dtype == torch.float32
    assert_matches("out", out, ref_out, dtype)
    assert_matches("last_state", last, ref_last, dtype)
    for name, g in grads.items():
        assert g.dtype == getattr(case, name).dtype
        assert_matches(f"d{name}", g, ref_grads[name], dtype, grad=True, scale=GRAD_SCALE.get(name, 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bc", ["var", "group", "inv"])
def test_gradcheck_float64(backend, bc):
    case = make_case(11, bsz=2, dim=2 if bc != "group" else 4, dstate=4, length=11, dtype=torch.float64,
                     bc=bc, h0=True, mask=True)
    ts = tuple(t.detach().clone().requires_grad_() for t in case.tensors())

    def f(*xs):
        return kernels.selective_scan(*xs[:8], True, xs[8], case.mask, True, backend=backend)

    assert torch.autograd.gradcheck(f, ts, eps=1e-6, atol=1e-6)


def test_gradcheck_float64_dstate16_generic_path():
    case = make_case(12, bsz=1, dim=2, dstate=16, length=9, dtype=torch.float64, h0=True)
    ts = tuple(t.detach().clone().requires_grad_() for t in case.tensors())
    assert torch.autograd.gradcheck(
        lambda *xs: kernels.selective_scan(*xs[:8], True, xs[8], None, True, backend="cpu"), ts)


def test_oracle_matches_closed_form():
    """K4: h_t = (Π_{s≤t} ā_s)·h0 + Σ_{s≤t} (Π_{s<r≤t} ā_r) b̄_s, straight from the §2 formulas."""
    case = make_case(5, bsz=1, dim=2, dstate=3, length=5, dtype=torch.float64, z=False, h0=True)
    dt = torch.nn.functional.softplus(case.delta + case.delta_bias[:, None])  # (1, D, L)
    a_bar = torch.exp(dt[..., None] * case.A[:, None, :])  # (1, D, L, N)
    b_bar = (dt * case.u)[..., None] * case.B.transpose(1, 2)[:, None]  # (1, D, L, N)
    ys, h = [], None
    for t in range(5):
        h = torch.prod(a_bar[:, :, : t + 1], dim=2) * case.initial_state
        for s in range(t + 1):
            h = h + torch.prod(a_bar[:, :, s + 1 : t + 1], dim=2) * b_bar[:, :, s]
        ys.append((h * case.C[:, None, :, t]).sum(-1) + case.D * case.u[:, :, t])
    out, last = selective_scan_ref(case.u, case.delta, case.A, case.B, case.C, case.D, None,
                                   case.delta_bias, True, case.initial_state)
    torch.testing.assert_close(out, torch.stack(ys, -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, h, rtol=1e-12, atol=1e-12)


def test_fused_cpu_outputs_fully_written(monkeypatch):
    """K5: output buffers are poisoned with NaN before the kernel runs; none may survive."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)
    case = make_case(21, dstate=16, length=130, h0=True, mask=True)
    out, last, grads = run_scan(case, "cpu")
    assert torch.isfinite(out).all()
    assert torch.isfinite(last).all()
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim", [4, 8])
def test_non_contiguous_inputs(backend, dim):
    case = make_case(4, dim=dim, dstate=8, length=33, h0=True)
    ref_out, ref_last, _ = run_scan(case, "oracle", grad_seed=None)
    # Same values, other memory layouts: (B, L, D) storage viewed as (B, D, L), and so on.
    case.u = case.u.transpose(1, 2).contiguous().transpose(1, 2)
    case.delta = case.delta.transpose(1, 2).contiguous().transpose(1, 2)
    case.B = case.B.transpose(1, 2).contiguous().transpose(1, 2)
    case.A = case.A.t().contiguous().t()
    assert not case.u.is_contiguous()
    assert not case.B.is_contiguous()
    out, last, _ = run_scan(case, backend, grad_seed=None)
    assert_matches("out", out, ref_out, torch.float32)
    assert_matches("last_state", last, ref_last, torch.float32)


def test_fused_cpu_never_allocates_full_state_tensor():
    """The fused forward saves only chunk-entry states, (Bsz, D, ceil(L/CHUNK), N)."""
    case = make_case(2, dstate=16, length=300)
    _out, _last, ckpt, _y = cpu.forward(*case.tensors()[:8], None, None, True)
    assert ckpt.shape == (2, 4, -(-300 // cpu.CHUNK), 16)
