"""Dispatch, registration and packaging of the kernels (architecture.md rule 5; samba-asr.md T5)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import kernels
from kernels import cpu, dispatch
from tests.conftest import require_module, require_tool
from tests.scan_utils import assert_matches, make_case, run_scan

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full_env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          cwd=ROOT, timeout=300)


def test_fused_cpu_kernel_builds_here():
    require_tool(os.environ.get("CXX", "g++"), "g++")
    assert cpu.available(), cpu.build_error()
    assert dispatch.resolve_backend("auto", torch.device("cpu"), torch.float32) == "cpu"


@pytest.mark.slow
def test_import_does_not_pull_heavy_modules():
    # Only the import is checked: the first call of any torch.library custom op imports torch._dynamo,
    # which probes for triton; that is torch's doing, and test_works_with_triton_blocked covers it.
    code = ("import sys, torch, kernels, recognizers\n"
            "print(sorted(m for m in ('triton', 'lightning', 'gradio') if m in sys.modules))")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_works_with_triton_blocked():
    """T5: with triton unimportable the package imports, runs on the CPU, and a CUDA-style request
    for triton falls back with exactly one warning."""
    code = ("import sys, warnings\n"
            "sys.modules['triton'] = None  # makes `import triton` raise ImportError\n"
            "import torch, kernels\n"
            "from kernels import dispatch\n"
            "u = torch.randn(1, 2, 5)\n"
            "B = torch.randn(1, 3, 5)\n"
            "kernels.selective_scan(u, u.abs(), -torch.rand(2, 3), B, B, backend='cpu')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    a = dispatch.resolve_backend('triton', torch.device('cuda'), torch.float32)\n"
            "    b = dispatch.resolve_backend('triton', torch.device('cuda'), torch.float32)\n"
            "print(a, b, len(w), 'triton' in str(w[0].message))")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["chunked", "chunked", "1", "True"]


@pytest.mark.slow
def test_missing_compiler_falls_back_cleanly(tmp_path):
    """No C++ compiler: the fused kernel reports why, auto falls back to the reference with one warning,
    and strict mode raises instead."""
    code = ("import warnings, torch, kernels\n"
            "from kernels import cpu\n"
            "u = torch.randn(1, 2, 5)\n"
            "args = (u, u.abs(), -torch.rand(2, 3), torch.randn(1, 3, 5), torch.randn(1, 3, 5))\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    kernels.selective_scan(*args); kernels.selective_scan(*args)\n"
            "print(cpu.available(), len(w), kernels.dispatch.resolve_backend('auto', u.device, u.dtype))\n"
            "import os; os.environ['RECOGNIZERS_SCAN_STRICT'] = '1'\n"
            "try:\n    kernels.selective_scan(*args)\nexcept kernels.BackendUnavailableError as e:\n"
            "    print('strict:', 'compiler' in str(e))\n")
    proc = _python(code, CXX="no-such-compiler", RECOGNIZERS_CACHE_DIR=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "1", "reference", "strict:", "True"]


def test_environment_override_and_strict_mode(monkeypatch):
    cpu_dev = torch.device("cpu")
    monkeypatch.setenv("RECOGNIZERS_SCAN_BACKEND", "reference")
    assert dispatch.resolve_backend("auto", cpu_dev, torch.float32) == "reference"
    assert dispatch.resolve_backend("chunked", cpu_dev, torch.float32) == "chunked"  # explicit wins
    monkeypatch.setenv("RECOGNIZERS_SCAN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        dispatch.resolve_backend("auto", cpu_dev, torch.float32)
    monkeypatch.delenv("RECOGNIZERS_SCAN_BACKEND")
    monkeypatch.setenv("RECOGNIZERS_SCAN_STRICT", "1")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(kernels.BackendUnavailableError, match="CUDA"):
        dispatch.resolve_backend("triton", cpu_dev, torch.float32)


def test_fallback_warns_once(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dispatch._warn_once.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert dispatch.resolve_backend("triton", torch.device("cpu"), torch.float32) == "reference"
    assert len(caught) == 1
    assert "falling back" in str(caught[0].message)


def test_environment_override_reaches_the_scan(monkeypatch):
    calls = []
    real = kernels.selective_scan_ref
    monkeypatch.setattr(kernels, "selective_scan_ref", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv("RECOGNIZERS_SCAN_BACKEND", "reference")
    case = make_case(0, length=5)
    kernels.selective_scan(*case.tensors()[:8], True)
    assert calls == [1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"u": torch.randn(2, 4)}, "u must be"), ({"A": torch.randn(3, 8)}, "A must be"),
     ({"B": torch.randn(2, 8, 15)}, "B must be"), ({"C": torch.randn(2, 3, 8, 16)}, "C must be"),
     ({"mask": torch.ones(2, 16)}, "mask must be a bool"), ({"D": torch.randn(5)}, "D must have shape"),
     ({"delta": torch.randn(2, 4, 16).int()}, "delta must be a floating-point")],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    case = make_case(0, length=16)
    args = {"u": case.u, "delta": case.delta, "A": case.A, "B": case.B, "C": case.C, "D": case.D}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        kernels.selective_scan(**args)
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        kernels.selective_scan(case.u, case.delta, case.A, case.B, case.C, backend="cuda-magic")


@pytest.mark.parametrize(
    "opts",
    [dict(), dict(D=True, z=True, bias=True, h0=True, mask=True), dict(bc="group", z=True, mask=True),
     dict(bc="inv", h0=True)],
)
def test_opcheck_fused_cpu_op(opts):
    full = {"D": False, "z": False, "bias": False, **opts}
    case = make_case(1, dim=4, dstate=4, length=9, dtype=torch.float64, **full)
    args = (*[t if t is None else t.requires_grad_() for t in case.tensors()[:8]],
            case.initial_state, case.mask, case.delta_softplus, "cpu")
    torch.library.opcheck(torch.ops.recognizers.selective_scan_fwd.default, args)


def test_torch_compile_traces_through_the_op():
    """fullgraph=True fails on any graph break; aot_eager also traces the backward op."""
    case = make_case(6, dstate=16, length=70, h0=True, mask=True)

    def f(*ts):
        return kernels.selective_scan(*ts[:8], True, ts[8], case.mask, True, backend="cpu")

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    eager_ts = [t.clone().requires_grad_() for t in case.tensors()]
    comp_ts = [t.clone().requires_grad_() for t in case.tensors()]
    eager_out, eager_last = f(*eager_ts)
    comp_out, comp_last = compiled(*comp_ts)
    torch.testing.assert_close(comp_out, eager_out)
    torch.testing.assert_close(comp_last, eager_last)
    (eager_out.sum() + eager_last.sum()).backward()
    (comp_out.sum() + comp_last.sum()).backward()
    for a, b in zip(eager_ts, comp_ts, strict=True):
        torch.testing.assert_close(b.grad, a.grad)


@pytest.mark.parametrize("backend", ["reference", "chunked", "cpu"])
def test_empty_sequence_forward_and_backward(backend):
    """L = 0 with every option (the fused op saves an empty y before the gate): empty outputs and
    gradients, the initial state passed through, and its gradient equal to the last state's."""
    case = make_case(4, dstate=4, length=0, dim=8, h0=True)
    leaves = [t.clone().requires_grad_() for t in case.tensors()]
    out, last = kernels.selective_scan(*leaves[:8], delta_softplus=True, initial_state=leaves[8],
                                       return_last_state=True, backend=backend)
    assert out.shape == (2, 8, 0)
    torch.testing.assert_close(last, case.initial_state)
    glast = torch.randn_like(last)
    (out.sum() + (last * glast).sum()).backward()
    assert leaves[0].grad.shape == (2, 8, 0)
    assert leaves[6].grad.shape == (2, 8, 0)
    torch.testing.assert_close(leaves[8].grad, glast)


def test_float64_runs_in_float64_on_every_cpu_backend():
    case = make_case(2, dstate=4, length=21, dtype=torch.float64, h0=True, mask=True)
    ref_out, _, ref_grads = run_scan(case, "oracle")
    for backend in ("reference", "chunked", "cpu"):
        out, last, grads = run_scan(case, backend)
        assert out.dtype == last.dtype == torch.float64
        assert_matches("out", out, ref_out, torch.float64)
        for name, g in grads.items():
            assert_matches(f"d{name}", g, ref_grads[name], torch.float64, grad=True)


def test_state_update_checks_and_updates_in_place():
    state = torch.zeros(2, 4, 8)
    x = torch.randn(2, 4)
    y = kernels.selective_state_update(state, x, torch.rand(2, 4), -torch.rand(4, 8), torch.randn(2, 8),
                                       torch.randn(2, 8))
    assert y.shape == (2, 4)
    assert torch.count_nonzero(state) > 0
    with pytest.raises(ValueError, match="B must be"):
        kernels.selective_state_update(state, x, torch.rand(2, 4), -torch.rand(4, 8), torch.randn(2, 7),
                                       torch.randn(2, 8))
    with pytest.raises(ValueError, match="float32 or float64"):
        kernels.selective_state_update(state.bfloat16(), x, torch.rand(2, 4), -torch.rand(4, 8),
                                       torch.randn(2, 8), torch.randn(2, 8))


@pytest.mark.parametrize("use", ["out", "last"])
def test_gradient_through_one_output_only(use):
    """Autograd skips materialising the unused output's gradient; the result must still be exact."""
    case = make_case(13, dstate=16, length=45, h0=True)
    results = []
    for backend in ("reference", "cpu"):
        ts = [t.detach().clone().requires_grad_() for t in case.tensors()]
        out, last = kernels.selective_scan(*ts[:8], True, ts[8], None, True, backend=backend)
        (out if use == "out" else last).square().sum().backward()
        results.append([t.grad for t in ts])
    for name, g_ref, g in zip(("u", "delta", "A", "B", "C", "D", "z", "bias", "h0"), *results, strict=True):
        if g_ref is None:  # the reference graph does not reach D and z from last_state
            assert torch.count_nonzero(g) == 0, name
            continue
        assert_matches(f"d{name}", g, g_ref, torch.float32, grad=True, scale=10)


@pytest.mark.triton
def test_opcheck_triton_op_under_interpreter():
    """The same custom op with the Triton backend (CPU tensors run under TRITON_INTERPRET=1)."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    require_module("numpy")
    require_module("triton")
    case = make_case(1, dim=4, dstate=4, length=9, h0=True, mask=True)
    args = (*[t.requires_grad_() for t in case.tensors()[:8]], case.initial_state, case.mask,
            case.delta_softplus, "triton")
    torch.library.opcheck(torch.ops.recognizers.selective_scan_fwd.default, args)
