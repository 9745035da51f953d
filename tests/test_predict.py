"""``recognizers predict`` (training/predict.py): transcribe's recognition in Lightning's predict loop.

In process through ``recognizers.cli.main`` with the tiny untrained Samba-ASR bundle (and a tiny PosFormer
for math): the merged ``predictions.jsonl`` equals what ``recognizers transcribe`` prints, in input order;
a rerun resumes from the rank journals; two CPU processes under DDP give the same records, once each.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recognizers.cli import main
from training.predict import FilesDataModule, RankShareSampler, RecognitionModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"


def _predict_args(config: str, model: Path, inputs: list, out: Path, *extra: str) -> list[str]:
    return ["predict", "--config", str(CONFIGS / config), "--model.model", str(model),
            "--data.inputs", json.dumps([str(p) for p in inputs]), "--trainer.callbacks.output_dir", str(out),
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", *extra]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _transcribe(*args) -> list[dict]:
    """What ``recognizers transcribe ... --device cpu`` prints, as records."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["transcribe", *map(str, args), "--device", "cpu", "-q"])
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _assert_same(got: list[dict], want: list[dict]) -> None:
    """Equal records, scores to float tolerance: batches made of other inputs pad differently, which
    moves the last digits of a score."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k not in ("score", "nbest")} == \
            {k: v for k, v in w.items() if k not in ("score", "nbest")}
        assert [h["text"] for h in g["nbest"]] == [h["text"] for h in w["nbest"]]
        scores = [[r["score"], *(h["score"] for h in r["nbest"])] for r in (g, w)]
        close = scores[1] if w["score"] is None else pytest.approx(scores[1], rel=1e-4, abs=1e-4)
        assert scores[0] == close


@pytest.fixture(scope="module")
def speech_inputs(audio_tree) -> list[Path]:
    """Four good files, in an order that is not sorted, and a corrupt one in the middle."""
    return [audio_tree["by"], audio_tree["ax"], audio_tree["corrupt"], audio_tree["top"], audio_tree["bx"]]


@pytest.fixture(scope="module")
def expected(tiny_asr, speech_inputs) -> list[dict]:
    return _transcribe(*speech_inputs, "--model", tiny_asr.path)


# ---- pieces ----


@pytest.mark.parametrize(("n", "world"), [(5, 2), (5, 3), (2, 8), (0, 2), (17, 4)])
def test_rank_shares_are_disjoint_contiguous_and_unpadded(n, world):
    shares = [list(RankShareSampler(range(n), world, rank)) for rank in range(world)]
    assert [i for share in shares for i in share] == list(range(n))  # each item once, in order
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert [len(RankShareSampler(range(n), world, rank)) for rank in range(world)] == list(map(len, shares))


def test_bad_settings_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="stdin"):
        FilesDataModule(["-"])
    with pytest.raises(ValueError, match=r"data\.task"):
        FilesDataModule(["a.wav"], task="video")
    with pytest.raises(ValueError, match="empty"):
        FilesDataModule([])
    with pytest.raises(ValueError, match=r"nbest 3 exceeds model\.beam_size 2"):
        RecognitionModule("samba-asr", beam_size=2, nbest=3)
    with pytest.raises(ValueError, match="num_groups 3 must divide"):
        RecognitionModule("samba-asr", beam_size=4, num_groups=3)
    dm = FilesDataModule([str(tmp_path / "*.flac")])
    with pytest.raises(ValueError, match=r"\*\.flac: the pattern matches no file"):
        dm.setup("predict")


# ---- speech, one process ----


def test_predict_equals_transcribe_in_input_order(tiny_asr, speech_inputs, expected, tmp_path,
                                                  monkeypatch):
    """One record per input, in input order, equal to transcribe's (text, score, nbest, words, error)."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(_predict_args("predict_speech.yaml", tiny_asr.path, speech_inputs, out)) == 0
    merged = _lines(out / "predictions.jsonl")
    assert [r["path"] for r in merged] == [str(p) for p in speech_inputs]
    assert merged == expected
    bad = merged[2]
    assert bad["error"].startswith(str(speech_inputs[2]))
    assert bad["text"] is None
    assert all(r["error"] is None and r["text"] for r in merged[:2] + merged[3:])
    journal = _lines(out / "predictions.rank0.jsonl")
    assert [r["index"] for r in journal] == list(range(5))
    assert not (tmp_path / "config.yaml").exists()  # predict saves no config into the working directory


def test_wrong_task_for_the_model_is_refused(tiny_asr, speech_inputs, tmp_path):
    args = _predict_args("predict_speech.yaml", tiny_asr.path, speech_inputs, tmp_path / "o",
                         "--data.task", "math")
    with pytest.raises(ValueError, match=r"data\.task is 'math' but the model .* recognizes 'speech'"):
        main(args)


def test_rerun_skips_inputs_already_recorded_without_error(tiny_asr, speech_inputs, expected, tmp_path):
    """A journal from an interrupted run: its successful records are kept (not recomputed), its failed
    ones retried, a line cut short by the kill is ignored, and records of other inputs are dropped."""
    out = tmp_path / "out"
    out.mkdir()
    done = {**expected[1], "index": 1, "text": "FROM THE JOURNAL"}
    failed = {**expected[3], "index": 3, "text": None, "error": "killed"}
    stranger = {**expected[0], "path": "elsewhere.flac"}
    (out / "predictions.rank1.jsonl").write_text(json.dumps(done) + "\n" + json.dumps(stranger) + "\n")
    (out / "predictions.rank0.jsonl").write_text(json.dumps(failed) + "\n" + '{"index": 4, "path": "x')
    assert main(_predict_args("predict_speech.yaml", tiny_asr.path, speech_inputs, out)) == 0
    merged = _lines(out / "predictions.jsonl")
    assert [r["path"] for r in merged] == [str(p) for p in speech_inputs]
    assert merged[1]["text"] == "FROM THE JOURNAL"
    _assert_same([merged[i] for i in (0, 2, 3, 4)], [expected[i] for i in (0, 2, 3, 4)])  # 3: retried
    lines = (out / "predictions.rank0.jsonl").read_text().splitlines()
    assert lines[1] == '{"index": 4, "path": "x'  # the cut line stays alone, the new records follow it
    new = [json.loads(line) for line in lines[2:]]
    assert sorted(r["index"] for r in new) == [0, 2, 3, 4]  # input 1 was skipped


# ---- speech, two processes ----


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_gives_the_same_records_once(tiny_asr, speech_inputs, expected,
                                                                 audio_tree, tmp_path):
    """Two gloo processes: the same merged records, each input recognised by exactly one rank. A rerun
    with one new input leaves rank 0 an empty share: it skips the predict loop and still merges."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"

    def run(inputs):
        args = _predict_args("predict_speech.yaml", tiny_asr.path, inputs, out, "--trainer.devices", "2",
                             "--trainer.strategy", "ddp", "--data.batch_size", "2")
        proc = subprocess.run([sys.executable, "-m", "recognizers", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run(speech_inputs)
    merged = _lines(out / "predictions.jsonl")
    assert [r["path"] for r in merged] == [str(p) for p in speech_inputs]
    _assert_same(merged, expected)
    journals = [_lines(out / f"predictions.rank{r}.jsonl") for r in (0, 1)]
    assert all(journals)
    assert sorted(r["index"] for j in journals for r in j) == list(range(5))  # no duplicates, none lost
    assert not (tmp_path / "config.yaml").exists()

    # the failed input dropped, a new one added: one input to do, rank 0's share [0, 0) is empty
    more = [p for p in speech_inputs if p != audio_tree["corrupt"]] + [audio_tree["silent"]]
    run(more)
    merged = _lines(out / "predictions.jsonl")
    assert [r["path"] for r in merged] == [str(p) for p in more]
    assert _lines(out / "predictions.rank1.jsonl")[-1]["path"] == str(audio_tree["silent"])
    assert len(_lines(out / "predictions.rank0.jsonl")) == len(journals[0])  # nothing new on rank 0


# ---- math ----


def test_math_predict_equals_transcribe(tmp_path):
    """The math twin config with a tiny PosFormer bundle (beam 2 to keep it cheap)."""
    from recognizers.checkpoint import save_bundle
    from recognizers.posformer.recognizer import PosFormerRecognizer
    from tests.math_fixtures import tiny_posformer, write_formulas

    bias = {"stop_bias": 3.0, "token_bias": dict.fromkeys(("x", "+", "1", "y"), 3.0)}
    recognizer = PosFormerRecognizer(tiny_posformer(**bias))
    bundle = save_bundle(tmp_path / "tiny.safetensors", recognizer.to_bundle())
    images = write_formulas(tmp_path / "img", {"a": "x+1", "b": "y=2x"})
    inputs = [images["b"], images["a"]]
    out = tmp_path / "out"
    assert main(_predict_args("predict_math.yaml", bundle, inputs, out, "--model.beam_size", "2")) == 0
    want = _transcribe(*inputs, "--task", "math", "--model", bundle, "--beam-size", "2")
    merged = _lines(out / "predictions.jsonl")
    assert merged == want
    assert [r["task"] for r in merged] == ["math", "math"]
