"""``recognizers transcribe`` and ``recognizers evaluate`` (interfaces.md; platform.md §6), in process
through ``recognizers.cli.main`` with a tiny untrained Samba-ASR bundle."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

from recognizers.cli import main
from recognizers.samba_asr.recognizer import SambaASRRecognizer
from tests.speech_fixtures import RATE, noise

pytestmark = pytest.mark.usefixtures("single_thread")

KEYS = {"path", "task", "text", "score", "nbest", "error"}
SUMMARY = re.compile(r"^(\d+) ok, (\d+) failed$", re.MULTILINE)


@pytest.fixture
def cli(tiny_asr, capsys):
    """``cli(*args)`` runs ``recognizers transcribe/evaluate ... --model TINY --device cpu``; returns
    (exit code, stdout, stderr)."""

    def run(command, *args):
        code = main([command, *map(str, args), "--model", str(tiny_asr.path), "--device", "cpu"])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def _summary(err: str) -> tuple[int, int]:
    found = SUMMARY.findall(err)
    assert len(found) == 1, err
    return int(found[0][0]), int(found[0][1])


def _good(tree) -> list:
    return [tree["top"], tree["ax"], tree["bx"], tree["by"]]


# ---- inputs and the default JSON lines ----


def test_default_jsonl_one_record_per_input_in_order(cli, audio_tree):
    inputs = [audio_tree["by"], audio_tree["ax"], audio_tree["top"], audio_tree["bx"]]
    code, out, err = cli("transcribe", *inputs)
    assert code == 0, err
    records = _records(out)
    assert [r["path"] for r in records] == [str(p) for p in inputs]
    for r in records:
        assert set(r) == KEYS | {"words"}
        assert r["task"] == "speech"
        assert r["error"] is None
        assert isinstance(r["text"], str)
        assert r["text"]
        assert isinstance(r["score"], float)
        assert r["nbest"][0] == {"text": r["text"], "score": r["score"]}
        assert all(set(w) == {"word", "start", "end"} for w in r["words"])
    assert _summary(err) == (4, 0)


def test_folders_with_and_without_recursion(cli, audio_tree):
    good = audio_tree["top"].parent
    code, out, _ = cli("transcribe", good)
    assert code == 0
    assert [r["path"] for r in _records(out)] == [str(audio_tree["top"])]  # notes.txt is not audio
    code, out, _ = cli("transcribe", "-r", good)
    assert code == 0
    assert sorted(r["path"] for r in _records(out)) == sorted(str(p) for p in _good(audio_tree))


def test_quoted_glob(cli, audio_tree):
    good = audio_tree["top"].parent
    code, out, _ = cli("transcribe", f"{good}/*/x.flac")
    assert code == 0
    assert [r["path"] for r in _records(out)] == [str(audio_tree["ax"]), str(audio_tree["bx"])]


def test_glob_matching_nothing_is_a_usage_error(cli, audio_tree):
    pattern = f"{audio_tree['top'].parent}/*.nothing"
    code, out, err = cli("transcribe", pattern)
    assert code == 2
    assert out == ""
    assert "matches no file" in err
    assert pattern in err


def test_list_file_and_stdin(cli, audio_tree, tmp_path, monkeypatch):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# inputs\n{audio_tree['bx']}\n\n{audio_tree['top']}\n")
    code, out, _ = cli("transcribe", f"@{listing}")
    assert code == 0
    assert [r["path"] for r in _records(out)] == [str(audio_tree["bx"]), str(audio_tree["top"])]

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{audio_tree['ax']}\n{audio_tree['by']}\n"))
    code, out, _ = cli("transcribe", "-")
    assert code == 0
    assert [r["path"] for r in _records(out)] == [str(audio_tree["ax"]), str(audio_tree["by"])]


def test_empty_or_missing_list_is_a_usage_error(cli, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    code, _, err = cli("transcribe", f"@{empty}")
    assert code == 2
    assert "empty" in err
    code, _, err = cli("transcribe", f"@{tmp_path / 'absent.txt'}")
    assert code == 2
    assert "absent.txt" in err


def test_bad_inputs_get_an_error_and_the_run_goes_on(cli, audio_tree, tmp_path):
    missing = tmp_path / "missing.flac"
    inputs = [audio_tree["top"], missing, audio_tree["corrupt"], audio_tree["empty"], audio_tree["silent"],
              audio_tree["bx"]]
    code, out, err = cli("transcribe", *inputs)
    assert code == 1
    records = _records(out)
    assert [r["path"] for r in records] == [str(p) for p in inputs]
    assert [r["error"] is None for r in records] == [True, False, False, False, False, True]
    assert all(set(r) >= KEYS for r in records)
    for r, word in zip(records[1:5], ("cannot read", "cannot read", "empty", "silent"), strict=True):
        assert r["path"] in r["error"]
        assert word in r["error"]
        assert r["text"] is None
        assert r["nbest"] == []
    assert records[0]["text"]
    assert records[5]["text"]
    assert _summary(err) == (2, 4)
    assert "Traceback" not in err


def test_auto_task_with_an_image_asks_for_task(tiny_asr, audio_tree, tmp_path, capsys, monkeypatch):
    """Without --model the task picks the recognizer: an image under --task auto is a per-file error
    (not a crash) and the audio file next to it runs on the registry's samba-asr (pointed at the tiny
    bundle through $RECOGNIZERS_WEIGHTS_DIR)."""
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(tiny_asr.path, weights / "samba_asr.safetensors")
    monkeypatch.setenv("RECOGNIZERS_WEIGHTS_DIR", str(weights))
    code = main(["transcribe", str(audio_tree["ax"]), str(audio_tree["image"]), str(audio_tree["bx"]),
                 "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1
    audio, image, other = _records(out)  # input order, whatever failed where
    assert other["path"] == str(audio_tree["bx"])
    assert image["path"] == str(audio_tree["image"])
    assert "--task" in image["error"]
    assert image["text"] is None
    assert audio["error"] is None
    assert audio["task"] == "speech"
    assert audio["text"]
    assert _summary(err) == (2, 1)
    assert "Traceback" not in err


def test_auto_task_errors_with_other_formats_and_output_dir(audio_tree, tmp_path, capsys):
    """The --task error of an image is reported on stderr whatever the format, and with --output-dir its
    record goes to the output folder like every other input's."""
    code = main(["transcribe", str(audio_tree["image"]), "--format", "txt"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "--task" in err
    assert _summary(err) == (0, 1)
    out_dir = tmp_path / "out"
    code = main(["transcribe", str(audio_tree["image"]), "--output-dir", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert "--task" in json.loads((out_dir / "image.png.jsonl").read_text())["error"]


def test_image_given_to_a_speech_model_is_a_per_file_error(cli, audio_tree):
    code, out, err = cli("transcribe", audio_tree["image"], audio_tree["top"])
    assert code == 1
    image, audio = _records(out)
    assert str(audio_tree["image"]) in image["error"]
    assert audio["error"] is None
    assert _summary(err) == (1, 1)


# ---- --output-dir, formats, resuming ----


def test_output_dir_mirrors_relative_paths(cli, audio_tree, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = cli("transcribe", "-r", audio_tree["top"].parent, "--output-dir", out_dir,
                         "--format", "txt")
    assert code == 0, err
    assert out == ""  # results go to the files
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    assert written == ["a/x.flac.txt", "b/x.flac.txt", "b/y.wav.txt", "top.flac.txt"]
    assert (out_dir / "a/x.flac.txt").read_text() != (out_dir / "b/x.flac.txt").read_text()
    assert all(p.read_text().strip() for p in out_dir.rglob("*.txt"))


@pytest.fixture(scope="module")
def reference(tiny_asr, audio_tree):
    """The jsonl record of good/b/x.flac (the other formats must agree with it)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["transcribe", str(audio_tree["bx"]), "--model", str(tiny_asr.path), "--device", "cpu"])
    assert code == 0
    (record,) = _records(out.getvalue())
    assert record["words"], "the fixture audio should give word times"
    return record


_SRT_CUE = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d,\d\d\d) --> (\d\d:\d\d:\d\d,\d\d\d)\n(.+)")
_VTT_CUE = re.compile(r"(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)\n(.+)")


def _seconds(stamp: str) -> float:
    h, m, s = stamp.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _check_cues(cues: list[tuple[str, str, str]], record: dict) -> None:
    assert cues
    assert " ".join(text for _, _, text in cues) == " ".join(w["word"] for w in record["words"])
    spans = [(_seconds(a), _seconds(b)) for a, b, _ in cues]
    assert all(a <= b for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(spans))
    assert spans[0][0] == pytest.approx(record["words"][0]["start"], abs=1e-3)
    assert spans[-1][1] == pytest.approx(record["words"][-1]["end"], abs=1e-3)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "txt", "tsv", "srt", "vtt", "tex"])
def test_every_format_writes_a_parsable_file(cli, audio_tree, tmp_path, reference, fmt):
    out_dir = tmp_path / "out"
    code, _out, err = cli("transcribe", audio_tree["bx"], "--output-dir", out_dir, "--format", fmt)
    assert code == 0, err
    assert [p.name for p in out_dir.rglob("*") if p.is_file()] == [f"x.flac.{fmt}"]
    text = (out_dir / f"x.flac.{fmt}").read_text(encoding="utf-8")
    if fmt in ("jsonl", "json"):
        assert json.loads(text) == reference
        assert (text.count("\n") == 1) == (fmt == "jsonl")
    elif fmt == "txt":
        assert text == reference["text"] + "\n"
    elif fmt == "tex":
        assert text == f"$${reference['text']}$$\n"
    elif fmt == "tsv":
        header, *rows = text.splitlines()
        assert header == "start\tend\ttext"
        cells = [row.split("\t") for row in rows]
        assert [c[2] for c in cells] == [w["word"] for w in reference["words"]]
        for (start, end, _), w in zip(cells, reference["words"], strict=True):
            assert re.fullmatch(r"\d+", start)
            assert re.fullmatch(r"\d+", end)
            assert int(start) == round(w["start"] * 1000)
            assert int(start) <= int(end)
    elif fmt == "srt":
        blocks = text.rstrip("\n").split("\n\n")
        cues = [_SRT_CUE.fullmatch(b) for b in blocks]
        assert all(cues), text
        assert [int(c[1]) for c in cues] == list(range(1, len(cues) + 1))
        _check_cues([(c[2], c[3], c[4]) for c in cues], reference)
    else:  # vtt
        assert text.startswith("WEBVTT\n\n")
        cues = [_VTT_CUE.fullmatch(b) for b in text.removeprefix("WEBVTT\n\n").rstrip("\n").split("\n\n")]
        assert all(cues), text
        _check_cues([(c[1], c[2], c[3]) for c in cues], reference)
    assert not list(tmp_path.rglob("*.part"))


def test_json_to_stdout_is_one_array(cli, audio_tree):
    code, out, _ = cli("transcribe", audio_tree["top"], audio_tree["bx"], "--format", "json")
    assert code == 0
    records = json.loads(out)
    assert [r["path"] for r in records] == [str(audio_tree["top"]), str(audio_tree["bx"])]


class _Counting:
    """Wraps ``SambaASRRecognizer.recognize`` and counts the inputs it is given."""

    def __init__(self, monkeypatch) -> None:
        self.inputs = 0
        original = SambaASRRecognizer.recognize

        def counted(rec, inputs, **options):
            self.inputs += len(inputs)
            return original(rec, inputs, **options)

        monkeypatch.setattr(SambaASRRecognizer, "recognize", counted)


def test_rerun_skips_existing_outputs_unless_overwrite(cli, audio_tree, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    args = ("-r", audio_tree["top"].parent, "--output-dir", out_dir, "--format", "srt")
    assert cli("transcribe", *args)[0] == 0
    outputs = sorted(out_dir.rglob("*.srt"))
    assert len(outputs) == 4
    before = {p: (p.stat().st_mtime_ns, p.read_text()) for p in outputs}

    counter = _Counting(monkeypatch)
    code, _, err = cli("transcribe", *args)  # everything done: nothing is recognised again
    assert code == 0
    assert counter.inputs == 0
    assert _summary(err) == (4, 0)
    assert {p: (p.stat().st_mtime_ns, p.read_text()) for p in outputs} == before

    (out_dir / "b" / "x.flac.srt").unlink()  # as if the run had been interrupted before this one
    assert cli("transcribe", *args)[0] == 0
    assert counter.inputs == 1
    assert (out_dir / "b" / "x.flac.srt").read_text() == before[out_dir / "b" / "x.flac.srt"][1]

    assert cli("transcribe", *args, "--overwrite")[0] == 0
    assert counter.inputs == 1 + 4
    assert not list(tmp_path.rglob("*.part"))


def test_rerun_retries_inputs_that_failed(cli, audio_tree, tmp_path):
    """A failure recorded in a jsonl output is not a finished output: the rerun tries it again (and
    still fails, so the exit status stays 1)."""
    out_dir = tmp_path / "out"
    missing = tmp_path / "in" / "late.flac"
    missing.parent.mkdir()
    args = (audio_tree["top"], missing, "--output-dir", out_dir)
    code, _, err = cli("transcribe", *args)
    assert code == 1
    assert _summary(err) == (1, 1)
    code, _, err = cli("transcribe", *args)
    assert code == 1
    assert _summary(err) == (1, 1)
    sf.write(missing, noise(0.5, 9), RATE)  # the file arrives: now it is recognised
    code, _, err = cli("transcribe", *args)
    assert code == 0
    assert _summary(err) == (2, 0)
    outputs = sorted(out_dir.rglob("*.jsonl"))
    assert [json.loads(p.read_text())["error"] for p in outputs] == [None, None]


# ---- decoding options through the whole pipeline ----


def test_batch_size_does_not_change_results(cli, audio_tree):
    """Inputs of different lengths batched together (padding) give what they give one by one."""
    runs = {}
    for size in (1, 8):
        code, out, _ = cli("transcribe", "-r", audio_tree["top"].parent, "--batch-size", size,
                           "--beam-size", 2)
        assert code == 0
        runs[size] = _records(out)
    assert [r["text"] for r in runs[1]] == [r["text"] for r in runs[8]]
    assert [r["words"] for r in runs[1]] == [r["words"] for r in runs[8]]
    for a, b in zip(runs[1], runs[8], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_nbest(cli, audio_tree):
    code, out, _ = cli("transcribe", audio_tree["ax"], audio_tree["bx"], "--nbest", "2", "--beam-size", "2")
    assert code == 0
    for r in _records(out):
        assert len(r["nbest"]) == 2
        scores = [h["score"] for h in r["nbest"]]
        assert scores == sorted(scores, reverse=True)
        assert r["nbest"][0] == {"text": r["text"], "score": r["score"]}


def test_diverse_nbest(cli, audio_tree):
    """Diverse beam search (2 groups of 2) returns distinct hypotheses; bad group counts are usage errors."""
    code, out, _ = cli("transcribe", audio_tree["ax"], "--nbest", "4", "--beam-size", "4",
                       "--num-groups", "2", "--diversity-penalty", "2.0")
    assert code == 0
    texts = [h["text"] for h in _records(out)[0]["nbest"]]
    assert 1 <= len(texts) <= 4
    assert len(set(texts)) == len(texts)
    code, out, err = cli("transcribe", audio_tree["ax"], "--beam-size", "3", "--num-groups", "2")
    assert code == 2
    assert out == ""
    assert "--num-groups" in err


def test_ctc_weight_steers_the_speech_search(cli, audio_tree, monkeypatch, capsys, tmp_path):
    """--ctc-weight reaches the joint CTC/attention search (the scores change with it); outside [0, 1)
    or for a task other than speech it is a usage error."""
    seen = []
    original = SambaASRRecognizer.recognize

    def spy(self, inputs, **options):
        seen.append(options.get("ctc_weight"))
        return original(self, inputs, **options)

    monkeypatch.setattr(SambaASRRecognizer, "recognize", spy)
    scores = {}
    for weight in ("0", "0.9"):
        code, out, _ = cli("transcribe", audio_tree["ax"], "--beam-size", "2", "--ctc-weight", weight)
        assert code == 0
        scores[weight] = _records(out)[0]["score"]
        assert seen[-1] == float(weight)
    assert scores["0"] != pytest.approx(scores["0.9"])
    with pytest.raises(SystemExit):
        cli("transcribe", audio_tree["ax"], "--ctc-weight", "1")
    assert "expected a number in [0, 1)" in capsys.readouterr().err
    image = tmp_path / "word.png"
    image.write_bytes(b"not read: the option is refused first")
    assert main(["transcribe", str(image), "--task", "text", "--ctc-weight", "0.5"]) == 2
    assert "--ctc-weight is for speech" in capsys.readouterr().err


def test_transcribe_help_does_not_import_torch_or_lightning():
    code = ("import sys\nfrom recognizers.cli import main\n"
            "try:\n    main(['transcribe', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'lightning', 'soundfile') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--output-dir" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ---- evaluate ----


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A LibriSpeech-layout folder: two speakers' chapters, three utterances (FLAC)."""
    root = tmp_path_factory.mktemp("corpus") / "test-clean"
    chapters = {("19", "198"): ["THE CAT SAT", "A RED HAT"], ("26", "495"): ["THE SUN"]}
    seed = 10
    for (speaker, chapter), texts in chapters.items():
        folder = root / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for k, text in enumerate(texts):
            utt = f"{speaker}-{chapter}-{k:04d}"
            sf.write(folder / f"{utt}.flac", noise(0.6 + 0.2 * k, seed), RATE)
            seed += 1
            lines.append(f"{utt} {text}\n")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return root


def test_evaluate_prints_one_json_report(cli, corpus, tiny_asr):
    code, out, err = cli("evaluate", "--task", "speech", "--data", corpus, "--batch-size", "2")
    assert code == 0, err
    (line,) = out.splitlines()
    report = json.loads(line)
    assert {"task", "model", "n", "metrics", "seconds", "rtf"} <= set(report)
    assert report["task"] == "speech"
    assert report["model"] == str(tiny_asr.path)
    assert report["n"] == 3
    assert {"wer", "cer"} <= set(report["metrics"])
    assert report["metrics"]["wer"] > 0
    assert report["metrics"]["cer"] > 0
    assert report["seconds"] > 0
    assert report["rtf"] > 0

    assert (report["beam_size"], report["ctc_weight"]) == (4, 0.3)  # the recognizer's defaults

    code, out, _ = cli("evaluate", "--task", "speech", "--data", corpus, "--limit", "1",
                       "--ctc-weight", "0.5")
    assert code == 0
    assert (json.loads(out)["n"], json.loads(out)["ctc_weight"]) == (1, 0.5)
    code, out, err = cli("evaluate", "--task", "math", "--data", corpus, "--ctc-weight", "0.5")
    assert (code, out) == (2, "")
    assert "--ctc-weight is for speech" in err


def test_evaluate_on_a_folder_that_is_not_a_corpus(cli, audio_tree, tmp_path):
    folder = audio_tree["top"].parent
    code, out, err = cli("evaluate", "--task", "speech", "--data", folder)
    assert code == 2
    assert out == ""
    assert str(folder) in err
    code, _, err = cli("evaluate", "--task", "speech", "--data", tmp_path / "absent")
    assert code == 2
    assert "absent" in err
