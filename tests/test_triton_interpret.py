"""Triton selective-scan kernels under the Triton interpreter (samba-asr.md §13.3, T1–T4).

Every comparison is against ``kernels.reference.selective_scan_ref`` run in float64 on the same input
values (upcast), with gradients from torch.autograd: a random gradient on ``out`` and, unless stated,
one on the last state. Errors are relative norms ‖x − x_ref‖ / ‖x_ref‖: ≤ 1e-5 for outputs and ≤ 1e-4
for gradients with fp32 inputs, ≤ 1e-2 with bf16 inputs (fp32 state). Shapes are tiny because the
interpreter runs each program in numpy.

T2 (combine order) does not apply: the kernels are tile-sequential (a plain time loop per program), so
there is no associative combine to mis-order. T3: the backward reads the recomputed states of each
chunk by reversed index inside that loop instead of using a reverse scan; the backward tests cover it.
Every test runs with ``triton_scan.POISON`` on, so every buffer the kernels must write starts as NaN.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.conftest import require_module

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton
require_module("numpy")  # the interpreter simulates kernels with numpy
require_module("triton")

# These imports must follow the TRITON_INTERPRET switch and the module checks above.
from kernels import triton_scan as ts  # noqa: E402
from kernels.reference import selective_scan_ref, selective_state_update_ref  # noqa: E402

pytestmark = pytest.mark.triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture(autouse=True)
def _poison_and_seed(monkeypatch):
    monkeypatch.setattr(ts, "POISON", True)
    torch.manual_seed(1234)  # the few tensors drawn outside _make(seed) are reproducible too


def _make(seed, bsz=2, dim=8, n=4, length=33, dtype=torch.float32, *, z=False, skip=False, bias=False,
          h0=False, mask=False, bc="vary", groups=2):
    """Inputs drawn as in samba-asr.md §7.1; bc in {"vary", "group", "inv"} picks the B/C layout."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=None):
        x = torch.rand(*shape, generator=g) * scale if scale else torch.randn(*shape, generator=g)
        return x.to(DEV)

    shape_bc = {"vary": (bsz, n, length), "group": (bsz, groups, n, length), "inv": (dim, n)}[bc]
    inp = dict(
        u=rnd(bsz, dim, length).to(dtype), delta=rnd(bsz, dim, length, scale=0.5).to(dtype),
        A=-rnd(dim, n, scale=0.5), B=rnd(*shape_bc).to(dtype), C=rnd(*shape_bc).to(dtype),
        D=rnd(dim) if skip else None, z=rnd(bsz, dim, length).to(dtype) if z else None,
        delta_bias=rnd(dim, scale=0.5) if bias else None,
        initial_state=rnd(bsz, dim, n) if h0 else None,
        mask=None,
    )
    if mask:
        m = torch.rand(bsz, length, generator=g) > 0.3
        m[1, length // 2:] = False  # a padded tail, as a shorter utterance in the batch has
        inp["mask"] = m.to(DEV)
    return inp


def _run(inp, softplus, chunk, gout, glast):
    """Triton forward + backward: (out, last_state, grads in GRAD_NAMES order)."""
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state", "mask")]
    out, last, ck, _ = ts.forward(*args, softplus, chunk=chunk)
    grads = ts.backward(gout, glast, *args, softplus, ck, chunk=chunk)
    return out, last, grads


def _oracle(inp, softplus, gout, glast):
    """Float64 reference forward and autograd gradients (None for absent inputs)."""
    x = {k: (v.detach().double().requires_grad_() if v is not None and k != "mask" else v)
         for k, v in inp.items()}
    out, last = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                   x["delta_bias"], softplus, x["initial_state"], x["mask"])
    loss = (out * gout.double()).sum()
    if glast is not None:
        loss = loss + (last * glast.double()).sum()
    loss.backward()
    return out.detach(), last.detach(), [None if x[k] is None else x[k].grad for k in GRAD_NAMES]


def _rel(x, ref):
    err = (x.double() - ref.double()).norm()
    den = ref.double().norm()
    return (err / den).item() if den > 0 else err.item()


def _check(inp, softplus=False, chunk=8, tol_out=1e-5, tol_grad=1e-4, seed=0, last_grad=True):
    g = torch.Generator().manual_seed(seed + 1000)
    u = inp["u"]
    gout = torch.randn(u.shape, generator=g).to(DEV, u.dtype)
    glast = torch.randn(u.shape[0], u.shape[1], inp["A"].shape[1], generator=g).to(DEV) if last_grad else None
    out, last, grads = _run(inp, softplus, chunk, gout, glast)
    r_out, r_last, r_grads = _oracle(inp, softplus, gout, glast)
    assert out.dtype == u.dtype
    assert last.dtype == torch.float32
    errs = {"out": _rel(out, r_out), "last_state": _rel(last, r_last)}
    assert max(errs.values()) <= tol_out, f"seed {seed}: {errs}"
    for name, got, ref in zip(GRAD_NAMES, grads, r_grads, strict=True):
        if ref is None:
            assert got is None, name
            continue
        src = inp[name]
        assert (got.shape, got.dtype) == (src.shape, src.dtype), name
        assert torch.isfinite(got).all(), f"seed {seed}: non-finite d{name}"
        errs["d" + name] = _rel(got, ref)
    assert max(errs.values()) <= tol_grad, f"seed {seed}: {errs}"
    return out, last, grads


CASES = {
    "L1_plain_N1": dict(length=1, n=1),
    "L7_z_D_softplus": dict(length=7, z=True, skip=True, bias=True),
    "L33_mask_h0_group_D6": dict(length=33, dim=6, mask=True, h0=True, bc="group", skip=True),
    "L64_invariant_z_mask": dict(length=64, bc="inv", z=True, mask=True, bias=True),
    "L33_all_N1": dict(length=33, n=1, z=True, skip=True, bias=True, h0=True, mask=True),
    "L20_all_N16": dict(length=20, n=16, z=True, skip=True, bias=True, h0=True, mask=True),
    # BLOCK_D = 4 with D = 6: two programs per batch row, the second one half empty
    "L17_D6_two_blocks": dict(length=17, dim=6, block_d=4, skip=True, mask=True, h0=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_backward_fp32(name, monkeypatch):
    """K1/K2: out, last state and every gradient against the float64 oracle (several chunks)."""
    opts = dict(CASES[name])
    monkeypatch.setattr(ts, "BLOCK_D", opts.pop("block_d", ts.BLOCK_D))
    _check(_make(len(name), **opts), softplus=opts.get("bias", False), chunk=8, seed=len(name))


def test_mixed_bc_layouts_no_last_grad():
    """B in 2 groups, C in 3 (D = 6: one channel per program segment), no last-state gradient."""
    inp = _make(3, dim=6, length=11, bc="group", groups=2, h0=True, z=True)
    inp["C"] = torch.randn(2, 3, 4, 11).to(DEV)
    _check(inp, chunk=5, last_grad=False)


def test_tiny_steps_accuracy():
    """softplus of very negative raw delta (Δ ≈ 1e-7 .. 1e-5) keeps full relative accuracy."""
    inp = _make(29, length=8)
    inp["delta"] = -12.0 - 4.0 * torch.rand(2, 8, 8).to(DEV)
    _check(inp, softplus=True, chunk=4)


def test_bf16_inputs():
    """bf16 u/delta/z/B/C with fp32 state: outputs and gradients within 1e-2 of the oracle."""
    inp = _make(5, length=33, dtype=torch.bfloat16, z=True, skip=True, bias=True, h0=True, mask=True)
    _check(inp, softplus=True, chunk=16, tol_out=1e-2, tol_grad=1e-2)


def test_non_contiguous_inputs():
    """K5: strided views (B/C from a (Bsz, L, N) tensor, u and delta sliced) are handled."""
    inp = _make(7, length=17, z=True, skip=True)
    inp["B"] = torch.randn(2, 17, 4).to(DEV).transpose(1, 2)
    inp["C"] = torch.randn(2, 17, 4).to(DEV).transpose(1, 2)
    inp["u"] = torch.randn(2, 8, 34).to(DEV)[:, :, ::2]
    inp["delta"] = (0.5 * torch.rand(2, 8, 17)).to(DEV).transpose(0, 1).contiguous().transpose(0, 1)
    _check(inp, chunk=5)


def test_extreme_values():
    """P7: very negative A (ā underflows to 0), raw delta above 20 (softplus identity), masked steps."""
    inp = _make(11, length=24, mask=True, bias=True, z=True, h0=True)
    inp["A"][0] = -1e30
    inp["A"][1, :2] = -1e4
    inp["delta"][:, :, 3:6] = 25.0
    out, last, _grads = _check(inp, softplus=True, chunk=8)
    assert torch.isfinite(out).all()
    assert torch.isfinite(last).all()


def test_chunk_invariance():
    """P1: outputs and gradients do not depend on the checkpoint interval (1, 3, L, > L)."""
    inp = _make(13, length=20, z=True, skip=True, bias=True, h0=True, mask=True)
    gout = torch.randn(2, 8, 20).to(DEV)
    glast = torch.randn(2, 8, 4).to(DEV)
    base = _run(inp, True, 20, gout, glast)
    for chunk in (1, 3, 64):
        out, last, grads = _run(inp, True, chunk, gout, glast)
        assert max(_rel(out, base[0]), _rel(last, base[1])) <= 1e-6, chunk
        for name, a, b in zip(GRAD_NAMES, grads, base[2], strict=True):
            assert _rel(a, b) <= 1e-6, (chunk, name)


def test_state_carry_over():
    """P3: scan(x[:k]) then scan(x[k:], initial_state=its last state) equals scan(x)."""
    inp = _make(17, length=29, z=True, skip=True, bias=True, mask=True)
    k = int(torch.randint(1, 28, (1,), generator=torch.Generator().manual_seed(17)))

    def fwd(sl, h0):
        part = dict(inp, u=inp["u"][..., sl], delta=inp["delta"][..., sl], z=inp["z"][..., sl],
                    B=inp["B"][..., sl], C=inp["C"][..., sl], mask=inp["mask"][:, sl], initial_state=h0)
        keys = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state", "mask")
        return ts.forward(*[part[x] for x in keys], True, chunk=8)

    full, last, *_ = fwd(slice(None), None)
    head, mid, *_ = fwd(slice(0, k), None)
    tail, end, *_ = fwd(slice(k, None), mid)
    assert _rel(torch.cat([head, tail], -1), full) <= 1e-6, k
    assert _rel(end, last) <= 1e-6, k


def test_checkpoints_and_empty_sequence():
    """Checkpoint c is the state entering chunk c; L = 0 returns the initial state untouched."""
    inp = _make(19, length=10, h0=True)
    args = [inp[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state", "mask")]
    _, _, ck, _ = ts.forward(*args, False, chunk=4)
    assert ck.shape == (2, 8, 3, 4)
    assert torch.equal(ck[:, :, 0], inp["initial_state"])
    for c in (1, 2):
        sl = slice(0, 4 * c)
        _, mid, *_ = ts.forward(args[0][..., sl], args[1][..., sl], args[2], args[3][..., sl],
                               args[4][..., sl], None, None, None, args[8], None, False, chunk=4)
        assert _rel(ck[:, :, c], mid) <= 1e-6
    empty = [a[..., :0] if a is not None and a.dim() == 3 and a.shape[-1] == 10 else a for a in args]
    out, last, ck0, _ = ts.forward(*empty, False, chunk=4)
    assert out.shape == (2, 8, 0)
    assert ck0.shape == (2, 8, 0, 4)
    assert torch.equal(last, args[8])


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_update(grouped, dtype):
    """T4: the decode-step kernel matches the oracle step, state updated in place (strided state)."""
    g = torch.Generator().manual_seed(23)
    bsz, dim, n = 2, 6, 4
    bc_shape = (bsz, 2, n) if grouped else (bsz, n)
    x, z = (torch.randn(bsz, dim, generator=g).to(DEV, dtype) for _ in range(2))
    dt = (0.5 * torch.rand(bsz, dim, generator=g) - 0.2).to(DEV, dtype)
    A = -0.5 * torch.rand(dim, n, generator=g).to(DEV)
    B, C = (torch.randn(*bc_shape, generator=g).to(DEV, dtype) for _ in range(2))
    D, bias = torch.randn(dim, generator=g).to(DEV), torch.rand(dim, generator=g).to(DEV)
    state = torch.randn(bsz, n, dim, generator=g).to(DEV).transpose(1, 2)  # non-contiguous, in place
    ref_state = state.double().clone()
    ptr = state.data_ptr()
    y = ts.selective_state_update(state, x, dt, A, B, C, D, z, bias, True)
    y_ref = selective_state_update_ref(ref_state, x.double(), dt.double(), A.double(), B.double(),
                                       C.double(), D.double(), z.double(), bias.double(), True)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert y.dtype == dtype
    assert state.data_ptr() == ptr
    assert _rel(state, ref_state) <= 1e-5
    assert _rel(y, y_ref) <= tol
    y2 = ts.selective_state_update(state, x, dt, A, B, C)  # no D, z, bias, softplus
    y2_ref = selective_state_update_ref(ref_state, *(t.double() for t in (x, dt, A, B, C)))
    assert _rel(state, ref_state) <= 1e-5
    assert _rel(y2, y2_ref) <= tol
