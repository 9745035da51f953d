"""benchmarks/scan_speed.py (``make bench``) runs end to end at a tiny length, in both modes: the table
(every backend, each in its own subprocess) and ``--paired`` (reference and fused runs interleaved in one
process). Timings on a shared test machine mean nothing, so only the records' shape and consistency are
checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scan_speed.py"

pytestmark = pytest.mark.slow


def _run(tmp_path: Path, *args: str) -> tuple[str, dict]:
    out = tmp_path / "scan.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads(out.read_text())


def test_table_mode_measures_every_backend(tmp_path):
    stdout, record = _run(tmp_path, "--lengths", "16", "--repeats", "1")
    rows = record["rows"]
    assert [r["backend"] for r in rows] == ["reference", "chunked", "cpu"]
    for row in rows:
        assert "error" not in row, row
        assert row["forward_ms"] > 0
        assert row["forward_backward_ms"] > 0
        assert row["peak_mib"] >= 0
    assert stdout.count("| 16 |") == 3


def test_paired_mode_interleaves_reference_and_fused_runs(tmp_path):
    stdout, record = _run(tmp_path, "--paired", "2", "--lengths", "16", "24")
    assert [p["length"] for p in record["paired"]] == [16, 24]
    for result in record["paired"]:
        assert len(result["pairs"]) == 2
        for pair in result["pairs"]:
            assert pair["ratio"] == pytest.approx(pair["reference_ms"] / pair["cpu_ms"])
        ratios = sorted(p["ratio"] for p in result["pairs"])
        assert result["median_ratio"] == pytest.approx(sum(ratios) / 2)
    assert "median ratio" in stdout


def test_inputs_are_the_mamba_block_arguments_and_reproducible():
    bench = load_benchmark("scan_speed")
    (leaves, grad), (again, _) = bench._inputs(8), bench._inputs(8)
    b, d, n = bench.SHAPE["batch"], bench.SHAPE["dim"], bench.SHAPE["dstate"]
    assert [tuple(t.shape) for t in leaves] == [(b, d, 8), (b, d, 8), (d, n), (b, n, 8), (b, n, 8), (d,),
                                                (b, d, 8), (d,)]
    assert all(t.requires_grad for t in leaves)
    assert tuple(grad.shape) == (b, d, 8)
    assert bool((leaves[2] < 0).all())  # A: negative, as the scan's stability needs
    assert all(bool((x == y).all()) for x, y in zip(leaves, again, strict=True))
