"""benchmarks/transcribe_throughput.py runs end to end on a few files (the report's shape only: timings
on a shared test machine mean nothing, so none are asserted)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("transcribe_throughput")


def test_report_of_batch_sizes_over_four_files(bench, tiny_asr, audio_tree, tmp_path, capsys):
    data = audio_tree["top"].parent  # good/: four audio files (and notes.txt, which is not an input)
    out = tmp_path / "results" / "throughput.json"
    code = bench.main(["--task", "speech", "--model", str(tiny_asr.path), "--data", str(data), "--num", "4",
                       "--batch-sizes", "1,2", "--threads", "1", "--beam-size", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads(out.read_text())
    assert {"task", "model", "data", "num", "beam_size", "load_seconds", "threads", "device", "cpu_count",
            "date", "rows"} <= set(report)
    assert (report["task"], report["model"], report["data"]) == ("speech", str(tiny_asr.path), str(data))
    assert (report["num"], report["threads"], report["beam_size"]) == (4, 1, 2)
    assert [r["batch_size"] for r in report["rows"]] == [1, 2]
    for row in report["rows"]:
        assert {"seconds", "files_per_second", "speedup", "failed", "same_text_as_first"} <= set(row)
        assert row["seconds"] > 0
        assert row["files_per_second"] == pytest.approx(4 / row["seconds"], rel=0.01)
        assert row["failed"] == 0
        assert row["same_text_as_first"] == 4  # batching does not change what is recognised
    assert report["rows"][0]["speedup"] == 1.0
    assert "| batch size |" in printed
    assert str(out) in printed


def test_missing_bundled_model_is_a_clear_error(bench, no_bundled_weights, capsys):
    assert bench.main(["--task", "math", "--num", "2"]) == 2
    err = capsys.readouterr().err
    assert "posformer" in err
    assert "--model" in err
