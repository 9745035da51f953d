"""benchmarks/math_latency.py: its recompute decoder really runs the full decoder over the whole prefix
at every step and never the cached path, and gives the cached search's hypotheses, so the benchmark's
"same outputs" check compares two different computations; the script runs end to end on a tiny model.
Timings on a shared test machine mean nothing, so none are asserted."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from recognizers.checkpoint import save_bundle
from recognizers.decoding import Hypothesis
from recognizers.posformer.recognizer import PosFormerRecognizer
from recognizers.posformer.search import DIRECTIONS, directional_search, encode_images, search_options
from tests.conftest import load_benchmark
from tests.math_fixtures import formula_image, tiny_posformer

pytestmark = pytest.mark.usefixtures("single_thread")

BIAS = {"stop_bias": 2.0, "token_bias": dict.fromkeys(("x", "+", "1", "y"), 2.0)}  # short, non-empty outputs


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("math_latency")


@pytest.fixture(scope="module")
def encoded():
    """A tiny float32 model (the benchmark's precision) and two random images of different sizes."""
    model = tiny_posformer(**BIAS)
    g = torch.Generator().manual_seed(7)
    images = [torch.rand(1, h, w, generator=g) for h, w in ((40, 96), (32, 128))]
    return model, encode_images(model, images)


def _spy_forward(model, monkeypatch) -> list[int]:
    """Record the prefix length of every full (teacher-forced) decoder pass."""
    lengths: list[int] = []
    forward = model.decoder.forward

    def spy(tgt, *args, **kwargs):
        lengths.append(tgt.shape[1])
        return forward(tgt, *args, **kwargs)

    monkeypatch.setattr(model.decoder, "forward", spy)
    return lengths


def _forbid(obj, name: str, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"the recompute path called the cached {name}")

    monkeypatch.setattr(obj, name, fail)


def test_recompute_search_equals_cached_search_without_the_cache(bench, encoded, monkeypatch):
    model, (memory, mask) = encoded
    options = search_options(3, 3, max_length=12)
    with monkeypatch.context() as patch:  # the cached search runs no full decoder pass at all
        full = _spy_forward(model, patch)
        cached = {d: directional_search(model, memory, mask, d, options) for d in DIRECTIONS}
        assert full == []
    with monkeypatch.context() as patch:
        _forbid(model.decoder.stack, "step", patch)
        _forbid(model.decoder, "init_state", patch)
        _forbid(model.decoder, "step", patch)
        full = _spy_forward(model, patch)
        recomputed = {d: directional_search(bench.RecomputingDecoder(model), memory, mask, d, options)
                      for d in DIRECTIONS}
    starts = [i for i, n in enumerate(full) if n == 1]
    assert len(starts) == 2  # one search per direction
    for run in (full[:starts[1]], full[starts[1]:]):  # every step: the whole prefix, one token longer
        assert run == list(range(1, len(run) + 1))
        assert len(run) >= 3
    longest = 0
    for d in DIRECTIONS:
        for a, b in zip(cached[d], recomputed[d], strict=True):
            problems, worst = bench.compare_hypotheses(a, b, 1e-5)
            assert problems == []
            assert worst <= 1e-5
            longest = max(longest, *(len(h.tokens) for h in a))
    assert longest >= 2  # the hypotheses compared are not trivially empty


def test_compare_hypotheses_reports_every_kind_of_difference(bench):
    base = [Hypothesis((5, 6), -0.5, -1.5, None, True), Hypothesis((5,), -0.7, -1.4, None, True)]
    assert bench.compare_hypotheses(base, list(base), 1e-4) == ([], 0.0)
    changed = [
        [base[0], Hypothesis((5,), -0.7 + 1e-3, -1.4, None, True)],  # score
        [base[0], Hypothesis((7,), -0.7, -1.4, None, True)],  # tokens
        [base[0], Hypothesis((5,), -0.7, -1.4, None, False)],  # finished flag
        [base[0], Hypothesis((5,), math.nan, -1.4, None, True)],  # NaN score
        base[:1],  # count
    ]
    for other in changed:
        problems, _ = bench.compare_hypotheses(base, other, 1e-4)
        assert len(problems) == 1, other


@pytest.fixture(scope="module")
def bundle_and_corpus(tmp_path_factory):
    """A tiny PosFormer bundle and a CROHME-layout folder of three images, one of them wider."""
    root = tmp_path_factory.mktemp("math_latency")
    bundle = save_bundle(root / "tiny.safetensors", PosFormerRecognizer(tiny_posformer(**BIAS)).to_bundle())
    data = root / "test"
    (data / "img").mkdir(parents=True)
    for name, text, size in (("f1", "x+1", (100, 36)), ("f2", "y=2x", (260, 48)), ("f3", "a^2", (110, 40))):
        formula_image(text, size).save(data / "img" / f"{name}.png")
    (data / "caption.txt").write_text("f1 x + 1\nf2 y = 2 x\nf3 a ^ { 2 }\n")
    return bundle, data


def test_report_over_a_tiny_corpus(bench, bundle_and_corpus, tmp_path, capsys):
    bundle, data = bundle_and_corpus
    out = tmp_path / "results" / "latency.json"
    code = bench.main(["--model", str(bundle), "--data", str(data), "--num", "2", "--threads", "1",
                       "--beam-size", "2", "--warmup", "1", "--out", str(out)])
    assert code == 0
    assert "mismatches: 0" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["model_sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()[:16]
    assert (report["num"], report["threads"], report["beam_size"], report["data"]) == (2, 1, 2, str(data))
    assert {"cpu", "torch", "load_average", "sizes", "summary", "images"} <= set(report)
    assert [image["name"] for image in report["images"]] == ["f1", "f2"]
    for image in report["images"]:
        assert {"seconds", "output_tokens", "encoder_seconds", "cached_seconds", "recompute_seconds",
                "speedup", "mismatches"} <= set(image)
    summary = report["summary"]
    assert summary["mismatched_images"] == 0
    assert summary["max_score_diff"] <= 1e-4
    assert {"latency_seconds", "mean_output_tokens", "search_speedup"} <= set(summary)
    assert {"mean", "median", "p90", "total"} <= set(summary["latency_seconds"])


def test_typical_sizes_and_errors(bench, bundle_and_corpus, tmp_path, monkeypatch, capsys):
    bundle, data = bundle_and_corpus
    out = tmp_path / "typical.json"
    code = bench.main(["--model", str(bundle), "--data", str(data), "--threads", "1", "--beam-size", "1",
                       "--no-compare", "--typical", "--typical-height", "8", "256", "--typical-width", "200",
                       "400", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [image["name"] for image in report["images"]] == ["f2"]  # the only model input 200-400 px wide
    assert "search_speedup" not in report["summary"]
    assert bench.main(["--model", str(tmp_path / "none.safetensors"), "--data", str(data)]) == 2
    assert bench.main(["--model", str(bundle), "--data", str(tmp_path / "missing")]) == 2
    monkeypatch.setattr("recognizers.registry.weights_path", lambda spec: tmp_path / "absent.safetensors")
    assert bench.main(["--data", str(data)]) == 2
    assert "bundled posformer model is not installed" in capsys.readouterr().err
