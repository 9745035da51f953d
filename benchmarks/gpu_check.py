"""GPU check of the Triton selective scan (samba-asr.md §7.6, §13.4 G1–G3).

G1 parity: the Triton forward and backward run on the full batch (B=16, D=1024, N=16, L in {512, 2048})
with z, D skip, delta_bias + softplus, an initial state, a padded mask and time-varying B/C, for fp32
and bf16 inputs (fp32 state). The float64 oracle (``kernels.reference.selective_scan_ref``) is far too
slow and large for the full batch, so it runs on a slice only: the first ``--slice-b`` sequences and
the first ``--slice-d`` channels. The gradient fed to the Triton backward is random on that slice and
zero elsewhere (on out and on the last state). Each (b, d) row's recurrence only sees its own
gradient, so the Triton gradients on the slice, including the batch- and channel-reduced dA, dB, dC,
dD and d delta_bias, must equal the oracle's for the slice, and every gradient outside it must be
exactly zero ("leak" below). Forward outputs are compared on the same slice of the full-batch run.
Pass: relative-norm error ≤ 1e-5 (outputs) / ≤ 1e-4 (gradients) for fp32 inputs, ≤ 1e-2 for bf16.

G2 timings: median (``triton.testing.do_bench``) of forward and forward+backward, Triton vs the
pure-PyTorch chunked scan (autograd), with the speedup; a BLOCK_D / CHUNK sweep of the Triton kernels;
and the decode-step kernel at B=16, D=1024, N=16.

G3 report: one JSON file (always written, even after an error) and a Markdown table on stdout. The
exit status is 1 on any parity failure or error. ``--smoke`` runs tiny shapes, on CPU through the
Triton interpreter when there is no GPU, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, without installing it
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (CPU smoke runs)

import triton

from kernels import triton_scan as ts
from kernels.reference import selective_scan_ref, selective_state_update_ref

KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state", "mask")
GRADS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(bsz, dim, n, length, dtype, seed, groups=None):
    """samba-asr.md §7.1 draws; B/C `(Bsz, N, L)`, or `(Bsz, G, N, L)` when groups is set."""
    torch.manual_seed(seed)
    bc = (bsz, n, length) if groups is None else (bsz, groups, n, length)
    mask = torch.ones(bsz, length, dtype=torch.bool, device=DEV)
    mask[1, (3 * length) // 4:] = False  # the second utterance is padded
    return dict(
        u=torch.randn(bsz, dim, length, device=DEV).to(dtype),
        delta=(0.5 * torch.rand(bsz, dim, length, device=DEV)).to(dtype),
        A=-0.5 * torch.rand(dim, n, device=DEV), B=torch.randn(*bc, device=DEV).to(dtype),
        C=torch.randn(*bc, device=DEV).to(dtype), D=torch.randn(dim, device=DEV),
        z=torch.randn(bsz, dim, length, device=DEV).to(dtype), delta_bias=0.5 * torch.rand(dim, device=DEV),
        initial_state=torch.randn(bsz, dim, n, device=DEV), mask=mask,
    )


def _slice(name, x, bs, ds):
    """The oracle's part of input/gradient `name`: sequences [:bs], channels [:ds] (B/C: group 0)."""
    if x is None or name in ("D", "delta_bias", "A"):
        return None if x is None else x[:ds]
    if name in ("B", "C"):
        return x[:bs, :1] if x.dim() == 4 else x[:bs]
    return x[:bs] if name == "mask" else x[:bs, :ds]


def _zero_outside(name, x, bs, ds):
    """Max |x| outside the oracle's slice (must be exactly 0 when the gradient is zero there)."""
    rest = x.detach().clone().float()
    part = _slice(name, rest, bs, ds)
    part.zero_()
    return rest.abs().max().item() if rest.numel() else 0.0


def _err(got, ref):
    diff = got.double() - ref.double()
    den = ref.double().norm().item()
    rel = diff.norm().item() / den if den > 0 else diff.norm().item()
    return {"max_abs": diff.abs().max().item() if diff.numel() else 0.0, "rel_norm": rel}


def parity(length, dtype, args, groups=None):
    """G1 for one shape/dtype: one dict per tensor with errors, tolerance and pass/fail."""
    bs, ds = args.slice_b, min(args.slice_d, args.dim)
    inp = make_inputs(args.batch, args.dim, args.dstate, length, dtype, seed=length, groups=groups)
    out, last, ck, _ = ts.forward(*[inp[k] for k in KEYS], True)
    gout = torch.zeros_like(out)
    glast = torch.zeros_like(last)
    gout[:bs, :ds] = torch.randn(bs, ds, length, device=DEV).to(dtype)
    glast[:bs, :ds] = torch.randn(bs, ds, args.dstate, device=DEV)
    grads = ts.backward(gout, glast, *[inp[k] for k in KEYS], True, ck)

    ref_in = {k: _slice(k, v, bs, ds) for k, v in inp.items()}
    ref_in = {k: (v if v is None or k == "mask" else v.double().requires_grad_()) for k, v in ref_in.items()}
    r_out, r_last = selective_scan_ref(*[ref_in[k] for k in KEYS[:8]], True, ref_in["initial_state"],
                                       ref_in["mask"])
    ((r_out * gout[:bs, :ds].double()).sum() + (r_last * glast[:bs, :ds].double()).sum()).backward()

    tol_out, tol_grad = (1e-5, 1e-4) if dtype == torch.float32 else (1e-2, 1e-2)
    rows = [dict(tensor="out", tol=tol_out, **_err(_slice("u", out, bs, ds), r_out)),
            dict(tensor="last_state", tol=tol_out, **_err(last[:bs, :ds], r_last))]
    leak = 0.0
    for name, got in zip(GRADS, grads, strict=True):
        err = _err(_slice(name, got, bs, ds), ref_in[name].grad)
        rows.append(dict(tensor="d" + name, tol=tol_grad, **err))
        leak = max(leak, _zero_outside(name, got, bs, ds))
    rows.append(dict(tensor="grad leak outside slice", tol=0.0, max_abs=leak, rel_norm=leak))
    for r in rows:
        r["pass"] = bool(r["rel_norm"] <= r["tol"])
    return rows


def bench(fn, grad_to_none=None):
    """Median milliseconds: do_bench on CUDA; a few timed runs on CPU (smoke runs only)."""
    if DEV == "cuda":
        return float(triton.testing.do_bench(fn, grad_to_none=grad_to_none, return_mode="median"))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _guarded(fn):
    """Run fn(); an out-of-memory becomes the string "OOM" (recorded, not fatal)."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "OOM"


def time_triton(inp, softplus=True):
    args = [inp[k] for k in KEYS]
    gout = torch.randn_like(inp["u"])

    def fwd_bwd():
        _out, _last, ck, _ = ts.forward(*args, softplus)
        ts.backward(gout, None, *args, softplus, ck)

    return bench(lambda: ts.forward(*args, softplus)), bench(fwd_bwd)


def time_chunked(inp, softplus=True):
    from kernels.chunked import selective_scan_chunked  # written alongside; absent means not timed

    leaves = {k: (v.detach().clone().requires_grad_() if v is not None and v.is_floating_point() else v)
              for k, v in inp.items()}
    gout = torch.randn_like(inp["u"])

    def run(grad: bool):
        with torch.set_grad_enabled(grad):
            out, _ = selective_scan_chunked(*[leaves[k] for k in KEYS[:8]], softplus, leaves["initial_state"],
                                            leaves["mask"])
        if grad:
            out.backward(gout)

    params = [v for v in leaves.values() if v is not None and v.requires_grad]
    fwd = _guarded(lambda: bench(lambda: run(False)))
    fwd_bwd = _guarded(lambda: bench(lambda: run(True), grad_to_none=params))
    return fwd, fwd_bwd


def timings(length, dtype, args):
    inp = make_inputs(args.batch, args.dim, args.dstate, length, dtype, seed=7)
    t_fwd, t_fb = time_triton(inp)
    c_fwd, c_fb = time_chunked(inp)
    del inp
    if DEV == "cuda":
        torch.cuda.empty_cache()

    def ratio(c, t):
        return round(c / t, 2) if isinstance(c, float) else None

    return dict(L=length, dtype=str(dtype).replace("torch.", ""), triton_fwd_ms=t_fwd, triton_fwd_bwd_ms=t_fb,
                chunked_fwd_ms=c_fwd, chunked_fwd_bwd_ms=c_fb,
                speedup_fwd=ratio(c_fwd, t_fwd), speedup_fwd_bwd=ratio(c_fb, t_fb))


def sweep(length, args):
    """Triton fwd / fwd+bwd over BLOCK_D and CHUNK (fp32), to pick the defaults."""
    inp = make_inputs(args.batch, args.dim, args.dstate, length, torch.float32, seed=11)
    rows, saved = [], (ts.BLOCK_D, ts.CHUNK)
    try:
        for block_d, chunk in ((4, 64), (8, 64), (16, 64), (8, 32), (8, 128)):
            ts.BLOCK_D, ts.CHUNK = block_d, chunk
            fwd, fb = time_triton(inp)
            rows.append(dict(L=length, BLOCK_D=block_d, CHUNK=chunk, fwd_ms=fwd, fwd_bwd_ms=fb))
    finally:
        ts.BLOCK_D, ts.CHUNK = saved
    return rows


def state_update(args):
    """Decode step: parity vs the oracle step (float64) and its median time."""
    bsz, dim, n = args.batch, args.dim, args.dstate
    torch.manual_seed(3)
    x, dt, z = (torch.randn(bsz, dim, device=DEV) for _ in range(3))
    A = -0.5 * torch.rand(dim, n, device=DEV)
    B, C = torch.randn(bsz, n, device=DEV), torch.randn(bsz, n, device=DEV)
    D, bias = torch.randn(dim, device=DEV), torch.rand(dim, device=DEV)
    state = torch.randn(bsz, dim, n, device=DEV)
    ref_state = state.double()
    y = ts.selective_state_update(state, x, dt, A, B, C, D, z, bias, True)
    y_ref = selective_state_update_ref(ref_state, x.double(), dt.double(), A.double(), B.double(), C.double(),
                                       D.double(), z.double(), bias.double(), True)
    rows = [dict(tensor="step out", tol=1e-5, **_err(y, y_ref)),
            dict(tensor="step state", tol=1e-5, **_err(state, ref_state))]
    for r in rows:
        r["pass"] = bool(r["rel_norm"] <= r["tol"])
    ms = bench(lambda: ts.selective_state_update(state, x, dt, A, B, C, D, z, bias, True))
    return rows, ms


def public_api(args):
    """The public entry point on CUDA: ``backend="auto"`` must pick Triton (strict mode, no fallback),
    autograd must run through the custom op, ``torch.compile(fullgraph=True)`` must trace it, and
    ``kernels.selective_state_update`` must dispatch too. Compared with the direct Triton call."""
    import kernels
    from kernels import dispatch

    os.environ["RECOGNIZERS_SCAN_STRICT"] = "1"
    chosen = dispatch.resolve_backend("auto", torch.device(DEV), torch.float32)
    inp = make_inputs(2, min(args.dim, 64), args.dstate, args.lengths[0], torch.float32, seed=5)
    leaves = {k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in inp.items()}
    kw = {k: leaves[k] for k in KEYS}
    out, last = kernels.selective_scan(**kw, delta_softplus=True, return_last_state=True)
    (out.square().sum() + last.sum()).backward()
    direct, d_last, *_ = ts.forward(*[inp[k] for k in KEYS], True)
    compiled = torch.compile(lambda **k: kernels.selective_scan(**k, delta_softplus=True), fullgraph=True)
    c_out = compiled(**{k: v.detach() if v.is_floating_point() else v for k, v in leaves.items()})
    want = "triton" if DEV == "cuda" else "cpu"
    rows = [dict(tensor=f"auto backend = {chosen} (want {want})", tol=0.0, max_abs=0.0,
                 rel_norm=0.0 if chosen == want else 1.0),
            dict(tensor="api out vs direct", tol=1e-6, **_err(out.detach(), direct)),
            dict(tensor="api last vs direct", tol=1e-6, **_err(last.detach(), d_last)),
            dict(tensor="compiled out vs direct", tol=1e-6, **_err(c_out, direct))]
    finite = all(bool(leaves[k].grad.isfinite().all()) for k in GRADS if leaves[k].grad is not None)
    rows.append(dict(tensor="autograd grads finite", tol=0.0, max_abs=0.0, rel_norm=0.0 if finite else 1.0))
    state = torch.zeros(2, kw["u"].shape[1], args.dstate, device=DEV)
    y = kernels.selective_state_update(state, inp["u"][..., 0], inp["delta"][..., 0], inp["A"],
                                       inp["B"][..., 0], inp["C"][..., 0], inp["D"], inp["z"][..., 0],
                                       inp["delta_bias"], True)
    rows.append(dict(tensor="state_update finite", tol=0.0, max_abs=0.0,
                     rel_norm=0.0 if bool(y.isfinite().all()) else 1.0))
    for r in rows:
        r["pass"] = bool(r["rel_norm"] <= r["tol"])
    return rows


def markdown(report) -> str:
    lines = ["| case | tensor | max abs | rel-norm | tol | pass |", "|---|---|---|---|---|---|"]
    for case in report["parity"]:
        for r in case["rows"]:
            lines.append(f"| {case['case']} | {r['tensor']} | {r['max_abs']:.3e} | {r['rel_norm']:.3e} "
                         f"| {r['tol']:g} | {'ok' if r['pass'] else 'FAIL'} |")
    lines += ["", "| L | dtype | triton fwd ms | chunked fwd ms | speedup | triton fwd+bwd ms "
              "| chunked fwd+bwd ms | speedup |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    for t in report["timings"]:
        lines.append(f"| {t['L']} | {t['dtype']} | {fmt(t['triton_fwd_ms'])} | {fmt(t['chunked_fwd_ms'])} "
                     f"| {t['speedup_fwd']} | {fmt(t['triton_fwd_bwd_ms'])} | {fmt(t['chunked_fwd_bwd_ms'])} "
                     f"| {t['speedup_fwd_bwd']} |")
    lines += ["", "| L | BLOCK_D | CHUNK | fwd ms | fwd+bwd ms |", "|---|---|---|---|---|"]
    lines += [f"| {s['L']} | {s['BLOCK_D']} | {s['CHUNK']} | {fmt(s['fwd_ms'])} | {fmt(s['fwd_bwd_ms'])} |"
              for s in report["sweep"]]
    lines.append(f"\nselective_state_update: {fmt(report.get('state_update_ms'))} ms")
    for kind in ("parity_errors", "timing_errors"):
        if report[kind]:
            lines.append(f"\n{kind.upper()}:\n" + "\n".join(report[kind]))
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/out/gpu_check.json")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--slice-b", type=int, default=2)
    p.add_argument("--slice-d", type=int, default=128)
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script itself (CPU ok)")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.dim, args.dstate, args.lengths, args.slice_d = 3, 8, 4, [9, 20], 4
    return args


def run_all(args, report) -> None:
    """Fill report section by section; an exception in one section is recorded and the rest still run.

    A parity section that raises counts as a parity failure; a timing section that raises (say, the
    chunked backend is missing) is recorded under timing_errors but does not fail the check.
    """
    def section(name, fn):
        try:
            fn()
        except Exception:
            kind = "timing_errors" if name.startswith(("timing", "sweep")) else "parity_errors"
            report[kind].append(f"{name}: {traceback.format_exc()}")

    for length in args.lengths:
        for dtype in (torch.float32, torch.bfloat16):
            case = f"L={length} {str(dtype).replace('torch.', '')}"
            section(case, lambda c=case, n=length, d=dtype: report["parity"].append(
                dict(case=c, rows=parity(n, d, args))))
    g = 2 if args.dim % 2 == 0 else None
    case = f"L={args.lengths[0]} float32 B/C groups={g}"
    section(case, lambda: report["parity"].append(dict(case=case, rows=parity(args.lengths[0], torch.float32,
                                                                              args, groups=g))))

    def step():
        rows, ms = state_update(args)
        report["parity"].append(dict(case="state update", rows=rows))
        report["state_update_ms"] = ms

    section("state update", step)
    section("public api", lambda: report["parity"].append(dict(case="public api", rows=public_api(args))))
    for length in args.lengths:
        for dtype in (torch.float32, torch.bfloat16):
            section(f"timing L={length} {dtype}", lambda n=length, d=dtype: report["timings"].append(
                timings(n, d, args)))
    if not args.no_sweep:
        section("sweep", lambda: report["sweep"].extend(sweep(args.lengths[-1], args)))


def main(argv=None) -> int:
    args = parse_args(argv)
    report = dict(
        device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu (triton interpreter)",
        torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
        shapes=dict(batch=args.batch, dim=args.dim, dstate=args.dstate, lengths=args.lengths,
                    oracle_slice=dict(batch=args.slice_b, channels=args.slice_d)),
        oracle=("float64 selective_scan_ref on sequences [:slice_b] and channels [:slice_d] only; the Triton "
                "run is full-size, with its output gradient random on that slice and zero elsewhere"),
        dtypes=["float32", "bfloat16"], state_dtype="float32",
        defaults=dict(BLOCK_D=ts.BLOCK_D, CHUNK=ts.CHUNK),
        parity=[], timings=[], sweep=[], parity_errors=[], timing_errors=[],
    )
    t0 = time.perf_counter()
    try:
        run_all(args, report)
    finally:
        report["wall_s"] = round(time.perf_counter() - t0, 1)
        rows = [r for c in report["parity"] for r in c["rows"]]
        report["all_pass"] = bool(rows) and not report["parity_errors"] and all(r["pass"] for r in rows)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"\nall_pass={report['all_pass']} wall={report['wall_s']}s json={args.out}")
    return 0 if report["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
