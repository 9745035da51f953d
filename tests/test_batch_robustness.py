"""``recognizers transcribe --output-dir`` over messy folders, re-runs and interrupted runs (platform.md §6).

test_transcribe.py checks each feature on its own; here they meet: one folder mixing audio, formula images,
a corrupt image, a zero-byte audio file, an unsupported file and equal names in two subfolders, run with
both tiny bundles from the registry; then re-runs, and a run killed midway (SIGINT and SIGKILL) in a
subprocess, which must leave only complete outputs and resume to exactly what an uninterrupted run writes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from recognizers import writers
from recognizers.checkpoint import save_bundle
from recognizers.cli import main
from recognizers.posformer.recognizer import PosFormerRecognizer
from recognizers.samba_asr.recognizer import SambaASRRecognizer
from tests.math_fixtures import tiny_posformer, write_formulas
from tests.speech_fixtures import RATE, noise

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^(\d+) ok, (\d+) failed$", re.MULTILINE)
GOOD_AUDIO = ("talk.flac", "a/x.flac", "b/x.flac")
GOOD_IMAGES = ("sum.png", "a/f.png", "b/f.png")
BAD = ("broken.png", "empty.flac", "notes.docx")
# Short non-empty formulas from an untrained PosFormer (as in test_posformer_recognizer.py).
BIAS = {"stop_bias": 3.0, "token_bias": dict.fromkeys(("x", "+", "1", "y"), 3.0)}


@pytest.fixture(scope="module")
def weights(tiny_asr, tmp_path_factory):
    """A $RECOGNIZERS_WEIGHTS_DIR holding both tiny bundles under their registry file names, so that
    ``--task auto|math`` without ``--model`` loads each task's model from the registry."""
    folder = tmp_path_factory.mktemp("weights")
    shutil.copy(tiny_asr.path, folder / "samba_asr.safetensors")
    save_bundle(folder / "posformer.safetensors", PosFormerRecognizer(tiny_posformer(**BIAS)).to_bundle())
    return folder


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """One folder: good audio and formula images (x.flac and f.png in both a/ and b/), random bytes named
    .png, a zero-byte .flac and a .docx (folders skip unknown types, so the tests also name it)."""
    root = tmp_path_factory.mktemp("mixed") / "in"
    for k, name in enumerate(GOOD_AUDIO):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, noise(0.5 + 0.2 * k, 20 + k), RATE)
    for name, text in zip(GOOD_IMAGES, ("x+1", "y=2x", "a^2"), strict=True):
        write_formulas(root / Path(name).parent, {Path(name).stem: text})
    (root / "broken.png").write_bytes(np.random.default_rng(1).integers(0, 256, 4000, np.uint8).tobytes())
    (root / "empty.flac").write_bytes(b"")
    (root / "notes.docx").write_bytes(b"PK\x03\x04" + bytes(64))
    return root


def _command(*args) -> list[str]:
    """``transcribe ARGS`` with the options every run here shares (small beam: the tests stay fast)."""
    return ["transcribe", *map(str, args), "--device", "cpu", "--beam-size", "2"]


def _transcribe(*args) -> tuple[int, str, str]:
    """``recognizers transcribe ARGS`` in process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(_command(*args))
    return code, out.getvalue(), err.getvalue()


def _summary(err: str) -> tuple[int, int]:
    (found,) = SUMMARY.findall(err)
    return int(found[0]), int(found[1])


def _record(out_dir: Path, name: str) -> dict:
    return json.loads((out_dir / f"{name}.jsonl").read_text(encoding="utf-8"))


def _two_passes(mixed: Path, out_dir: Path) -> tuple[tuple, tuple]:
    """``--task auto`` does the audio (an image may be math or handwriting, so auto refuses it), then
    ``--task math`` over the same inputs and output folder does the images: the finished audio outputs
    are skipped and the images' failure records retried. Returns both passes' (code, stdout, stderr)."""
    inputs = ("-r", mixed, mixed / "notes.docx", "--output-dir", out_dir)
    return _transcribe(*inputs), _transcribe(*inputs, "--task", "math")


class _Spy:
    """Records which files each recognizer loads (both classes), i.e. which inputs a run really redoes
    (``recognize`` passes the loaded tensors through ``load_input`` again: those are not counted)."""

    def __init__(self, monkeypatch) -> None:
        self.loaded: list[str] = []
        for cls in (SambaASRRecognizer, PosFormerRecognizer):
            monkeypatch.setattr(cls, "load_input", self._wrap(cls.load_input))

    def _wrap(self, original):
        def load_input(rec, source):
            if isinstance(source, str | Path):
                self.loaded.append(Path(source).name)
            return original(rec, source)

        return load_input


# ---- one messy folder ----


def test_mixed_folder_every_good_input_gets_its_own_output(weights, mixed, tmp_path, monkeypatch):
    monkeypatch.setenv("RECOGNIZERS_WEIGHTS_DIR", str(weights))
    out_dir = tmp_path / "out"
    (code1, out1, err1), (code2, out2, err2) = _two_passes(mixed, out_dir)
    assert (code1, out1, code2, out2) == (1, "", 1, "")  # bad inputs fail; results go to files only
    assert _summary(err1) == (3, 6)  # the audio; the 4 images, empty.flac and notes.docx failed
    assert _summary(err2) == (6, 3)  # audio skipped (still ok) + images; the 3 bad inputs failed again
    for err in (err1, err2):
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == _summary(err)[1]
        for name in BAD:  # every bad input is reported, naming its file
            assert any(str(mixed / name) in line for line in errors), (name, err)
    assert "unknown file type '.docx'" in err1
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    assert written == sorted(f"{n}.jsonl" for n in GOOD_AUDIO + GOOD_IMAGES + BAD)  # no .part left
    for name in GOOD_AUDIO + GOOD_IMAGES:  # x.flac and f.png exist twice: mirrored paths, no collision
        record = _record(out_dir, name)
        assert record["path"] == str(mixed / name)
        assert record["error"] is None
        assert record["task"] == ("speech" if name.endswith(".flac") else "math")
        assert record["text"]
    for name in BAD:
        record = _record(out_dir, name)
        assert record["path"] == str(mixed / name)
        assert str(mixed / name) in record["error"]
        assert record["text"] is None


def test_rerun_skips_finished_inputs_and_retries_failed_ones(weights, mixed, tmp_path, monkeypatch):
    monkeypatch.setenv("RECOGNIZERS_WEIGHTS_DIR", str(weights))
    out_dir = tmp_path / "out"
    _two_passes(mixed, out_dir)
    stamps = {n: (out_dir / f"{n}.jsonl").stat().st_mtime_ns for n in GOOD_AUDIO + GOOD_IMAGES}
    contents = {n: (out_dir / f"{n}.jsonl").read_text() for n in GOOD_AUDIO + GOOD_IMAGES}
    spy = _Spy(monkeypatch)
    for task in ("auto", "math"):
        code, _, err = _transcribe("-r", mixed, mixed / "notes.docx", "--output-dir", out_dir, "--task", task)
        assert code == 1
        assert _summary(err) == (6, 3)
    # Nothing finished is read or recognised again; the failed ones are tried again by each run (under
    # auto, notes.docx fails on its type before any model sees it).
    assert sorted(spy.loaded) == ["broken.png", "empty.flac", "empty.flac", "notes.docx"]
    assert {n: (out_dir / f"{n}.jsonl").stat().st_mtime_ns for n in stamps} == stamps
    assert {n: (out_dir / f"{n}.jsonl").read_text() for n in contents} == contents


# ---- atomic writes ----


def test_interrupted_write_leaves_no_part_file_and_keeps_the_old_output(tmp_path, monkeypatch):
    target = tmp_path / "a" / "x.flac.txt"
    writers.write_atomic(target, "old\n")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(writers.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writers.write_atomic(target, "new and longer\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["x.flac.txt"]


# ---- runs killed midway (subprocesses) ----

MANY = 48  # enough that the run is still going when its first outputs appear


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """MANY short utterances in 4 folders, each name (u0.flac ...) in every folder."""
    root = tmp_path_factory.mktemp("many") / "in"
    for k in range(MANY):
        path = root / f"s{k % 4}" / f"u{k // 4}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, noise(1.0 + 0.05 * (k % 7), 100 + k), RATE)
    return root


def _many_args(many: Path, model: Path, out_dir: Path) -> tuple:
    return ("-r", many, "--output-dir", out_dir, "--model", model, "--batch-size", "1")


def _outputs(out_dir: Path) -> dict[str, str]:
    """Finished outputs (what a resumed run would skip) by relative path; ``.part`` files are not outputs."""
    return {p.relative_to(out_dir).as_posix(): p.read_text(encoding="utf-8")
            for p in out_dir.rglob("*.jsonl")}


@pytest.fixture(scope="module")
def reference(tiny_asr, many, tmp_path_factory) -> dict[str, str]:
    """The outputs of an uninterrupted run, one thread like the interrupted one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out_dir = tmp_path_factory.mktemp("reference")
        code, _, err = _transcribe(*_many_args(many, tiny_asr.path, out_dir))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    outputs = _outputs(out_dir)
    assert len(outputs) == MANY
    return outputs


def _assert_same(text: str, expected: str) -> None:
    """One complete jsonl output equal to the reference one (scores to rounding: another process)."""
    assert text.endswith("\n")
    assert text.count("\n") == 1
    got, want = json.loads(text), json.loads(expected)
    assert got["score"] == pytest.approx(want["score"], abs=1e-4)
    assert [h["score"] for h in got["nbest"]] == pytest.approx([h["score"] for h in want["nbest"]], abs=1e-4)
    for record in (got, want):
        record.pop("score")
        record["nbest"] = [h["text"] for h in record["nbest"]]
    assert got == want


def _start_and_interrupt(args: tuple, out_dir: Path, sig: int) -> tuple[int, str]:
    """Run ``python -m recognizers transcribe ARGS``, send ``sig`` once its first output exists; returns
    (exit status, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # A shell starts background jobs with SIGINT ignored, and exec keeps an ignored signal ignored (Python
    # then never installs its KeyboardInterrupt handler): give the child the default disposition, as an
    # interactive terminal would, whatever launched the test run.
    proc = subprocess.Popen([sys.executable, "-m", "recognizers", *_command(*args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300  # start-up (torch import, model load) on a busy machine
        while not any(out_dir.rglob("*.jsonl")):
            assert proc.poll() is None, f"the run ended before its first output: {proc.communicate()}"
            assert time.monotonic() < deadline, "no output after 300 s"
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_killed_run_leaves_complete_outputs_and_resumes(sig, tiny_asr, many, reference, tmp_path,
                                                        monkeypatch):
    out_dir = tmp_path / "out"
    args = _many_args(many, tiny_asr.path, out_dir)
    code, err = _start_and_interrupt(args, out_dir, sig)
    assert code != 0, err
    finished = _outputs(out_dir)
    assert 1 <= len(finished) < MANY  # the signal landed midway
    for rel, text in finished.items():  # every output there is complete, none truncated
        _assert_same(text, reference[rel])
    if sig == signal.SIGINT:  # Ctrl-C: a clean stop; SIGKILL may leave a .part, which is no output
        assert not list(out_dir.rglob("*.part"))
        assert "Traceback" not in err, err
        assert code == 130

    spy = _Spy(monkeypatch)
    code, _, err = _transcribe(*args)
    assert code == 0, err
    assert len(spy.loaded) == MANY - len(finished)  # only the unfinished inputs are redone
    assert _summary(err) == (MANY, 0)
    resumed = _outputs(out_dir)
    assert resumed.keys() == reference.keys()
    for rel, text in resumed.items():
        _assert_same(text, reference[rel])
    assert sorted(p.name for p in out_dir.rglob("*") if p.is_file() and p.suffix != ".jsonl") == []
