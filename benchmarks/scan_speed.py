"""Selective-scan speed and memory on the CPU: every CPU backend against the sequential reference.

    python benchmarks/scan_speed.py [--lengths 256 1024 4096] [--out benchmarks/out/scan_speed.json]
    python benchmarks/scan_speed.py --paired 8 [--lengths 1024]   # the fused/reference ratio, interleaved

Shapes: B=4, D=512, N=16, float32, called as the Mamba block calls it (D skip, z gate, delta_bias
with softplus). Each (backend, L) runs in its own subprocess, so its peak memory is its own: the
peak resident set during one forward+backward minus the resident set just before it (inputs and
the warm-up excluded). Times are medians over repeats after WARMUP forward+backward runs (the first
runs of a process also pay for first-touch page faults and allocator growth).
Prints a Markdown table and writes JSON. A benchmark, not a test: nothing here asserts.

This machine's speed drifts by up to ±20 % over seconds, and the table's backends are timed minutes
apart, so their ratios carry that drift. ``--paired K`` measures the fused/reference ratio the other
way: in one process, K times, one reference forward+backward and then the median of 5 fused ones, so
both see the same load; it prints each pair's ratio and their median.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("reference", "chunked", "cpu")
SHAPE = {"batch": 4, "dim": 512, "dstate": 16}
WARMUP = 3  # forward+backward runs before timing, for every backend alike


def _peak_mib(run) -> float:
    """Rise of the resident set while ``run()`` runs, after a warm-up run (which builds the fused kernel
    and imports what the first call imports, so neither is counted)."""
    from recognizers.memory import PeakRSS, status_kib

    run()
    gc.collect()
    base = status_kib("VmRSS") or 0
    with PeakRSS() as peak:
        run()
    if peak.mib is None:  # no reset available: the lifetime peak, which includes the warm-up
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return peak.mib


def _inputs(length: int):
    """The Mamba block's arguments (u, delta, A, B, C, D, z, delta_bias), requiring grad, and the gradient of
    the output; seeded, so every backend and every process gets the same ones."""
    import torch

    torch.manual_seed(0)
    b, d, n = SHAPE["batch"], SHAPE["dim"], SHAPE["dstate"]
    leaves = [torch.randn(b, d, length), torch.randn(b, d, length) - 2.0, -torch.rand(d, n) - 0.5,
              torch.randn(b, n, length), torch.randn(b, n, length), torch.ones(d),
              torch.randn(b, d, length), torch.rand(d)]
    return [t.requires_grad_() for t in leaves], torch.randn(b, d, length)


def _worker(backend: str, length: int, repeats: int) -> dict:
    """Measure one backend at one length (runs inside a subprocess). repeats == 0: peak memory only."""
    import torch

    import kernels

    leaves, grad = _inputs(length)

    def forward():
        return kernels.selective_scan(*leaves, delta_softplus=True, backend=backend)

    def forward_backward():
        forward().backward(grad)
        for t in leaves:
            t.grad = None

    if repeats == 0:
        return {"peak_mib": _peak_mib(forward_backward)}
    for _ in range(WARMUP):
        forward_backward()
    times = {"forward": [], "forward_backward": []}
    for _ in range(repeats):
        with torch.no_grad():
            t0 = time.perf_counter()
            forward()
            times["forward"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        forward_backward()
        times["forward_backward"].append(time.perf_counter() - t0)
    return {"backend": backend, "length": length, "threads": torch.get_num_threads(),
            "forward_ms": 1e3 * statistics.median(times["forward"]),
            "forward_backward_ms": 1e3 * statistics.median(times["forward_backward"]),
            "repeats": repeats, "warmup": WARMUP}


def _paired(length: int, pairs: int) -> dict:
    """Interleaved reference and fused forward+backward in one process (runs inside a subprocess)."""
    import kernels

    leaves, grad = _inputs(length)

    def timed(backend: str) -> float:
        t0 = time.perf_counter()
        kernels.selective_scan(*leaves, delta_softplus=True, backend=backend).backward(grad)
        elapsed = time.perf_counter() - t0
        for t in leaves:
            t.grad = None
        return elapsed

    for _ in range(WARMUP):
        timed("reference"), timed("cpu")
    rows = []
    for _ in range(pairs):
        ref = timed("reference")
        fused = statistics.median(timed("cpu") for _ in range(5))
        rows.append({"reference_ms": 1e3 * ref, "cpu_ms": 1e3 * fused, "ratio": ref / fused})
    return {"length": length, "pairs": rows, "median_ratio": statistics.median(r["ratio"] for r in rows)}


def _subprocess(backend: str, length: int, repeats: int, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", backend, str(length), str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Timed runs keep freed memory instead of giving it back to the system between iterations (glibc's
# trim and mmap thresholds raised to their limits). With the defaults, whether an iteration pays for
# page faults on its fresh 8-32 MB buffers varies run to run (0-40 % on this machine); PyTorch's CPU
# tuning guide recommends a caching allocator (jemalloc, tcmalloc) for the same reason. All backends
# are timed alike; their buffers above 32 MB are still mapped and unmapped every time.
TIMING_ENV = {"MALLOC_TRIM_THRESHOLD_": str(2**32), "MALLOC_MMAP_THRESHOLD_": str(2**25)}


def _run(backend: str, length: int, repeats: int) -> dict:
    """Times in one subprocess; peak memory in another whose allocator hands every large freed block
    straight back to the system (glibc would otherwise keep the warm-up's memory and reuse it, which
    hides the peak)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    row = {"backend": backend, "length": length,
           **_subprocess(backend, length, repeats, {**env, **TIMING_ENV})}
    memory = _subprocess(backend, length, 0, {**env, "MALLOC_MMAP_THRESHOLD_": "65536",
                                              "MALLOC_TRIM_THRESHOLD_": "0"})
    if "error" in row or "error" in memory:
        return {"backend": backend, "length": length, "error": row.get("error") or memory["error"]}
    return {**row, **memory}


def _table(rows: list[dict]) -> str:
    head = ("| L | backend | forward ms | fwd+bwd ms | peak MiB | forward vs ref | fwd+bwd vs ref "
            "| memory vs ref |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['length']} | {r['backend']} | failed: {r['error'][:60]} | | | | | |")
            continue
        ref = next(x for x in rows if x["length"] == r["length"] and x["backend"] == "reference")
        lines.append(
            f"| {r['length']} | {r['backend']} | {r['forward_ms']:.1f} | {r['forward_backward_ms']:.1f} "
            f"| {r['peak_mib']:.0f} | {ref['forward_ms'] / r['forward_ms']:.1f}x "
            f"| {ref['forward_backward_ms'] / r['forward_backward_ms']:.1f}x "
            f"| {r['peak_mib'] / max(ref['peak_mib'], 1e-9):.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "scan_speed.json")
    parser.add_argument("--paired", type=int, default=0, metavar="K",
                        help="instead of the table: K interleaved reference/fused pairs per length")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backend, length, repeats = args.worker
        result = _paired(int(length), int(repeats)) if backend == "paired" else _worker(
            backend, int(length), int(repeats))
        print(json.dumps(result))
        return 0
    if args.paired:
        return _main_paired(args)
    rows = []
    for length in args.lengths:
        for backend in BACKENDS:
            # The reference is slow at long L; three repeats are plenty for its seconds-long runs.
            repeats = min(args.repeats, 3) if backend != "cpu" else args.repeats
            rows.append(_run(backend, length, repeats))
            print(f"measured {backend} L={length}", file=sys.stderr)
    table = _table(rows)
    print(f"Selective scan on the CPU ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores), B={SHAPE['batch']}, D={SHAPE['dim']}, N={SHAPE['dstate']}, fp32, "
          "with D, z, delta_bias and softplus:\n")
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"shape": SHAPE, "dtype": "float32", "rows": rows}, indent=2))
    print(f"\nJSON: {args.out}")
    return 0


def _main_paired(args) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **TIMING_ENV}
    results = []
    for length in args.lengths:
        result = _subprocess("paired", length, args.paired, env)
        if "error" in result:
            print(f"L={length}: failed: {result['error']}")
            return 1
        results.append(result)
        print(f"L={length}: fused forward+backward vs reference, {args.paired} interleaved pairs")
        for r in result["pairs"]:
            print(f"  reference {r['reference_ms']:.0f} ms, fused {r['cpu_ms']:.1f} ms: {r['ratio']:.1f}x")
        print(f"  median ratio {result['median_ratio']:.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"shape": SHAPE, "dtype": "float32", "paired": results}, indent=2))
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
