"""`recognizers synth speech`: sentence sources, speaker hold-out, LibriSpeech layout, determinism."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.datasets.librispeech import scan_librispeech
from data.synth import sentences, speech, voices
from data.synth.sentences import SourceError, assign_split, sentences_from_entry, to_transcript
from data.synth.speech import CorpusConfig, CorpusConfigError, plan_corpus
from recognizers.cli import main
from tests.conftest import IN_CI, require_tool

TRANSCRIPT = re.compile(r"[A-Z']+(?: [A-Z']+)*")
SPLITS = ("train", "dev", "test")
ARGS = ["--num", "24", "--dev-fraction", "0.25", "--test-fraction", "0.25"]


def _require_file(path: Path, package: str) -> None:
    if not path.exists():
        message = f"{path} not found: install the Debian package {package} (make system-deps)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _require_engines() -> None:
    for tool, package in (("espeak-ng", "espeak-ng"), ("flite", "flite"), ("text2wave", "festival")):
        require_tool(tool, package)
    _require_file(sentences.FORTUNES_DIR, "fortunes")
    _require_file(sentences.WORDS_FILE, "wamerican")


# --- sentences ----------------------------------------------------------------------------------------


def test_transcripts_are_librispeech_style():
    assert to_transcript('"Don\'t panic," he said -- twice.') == "DON'T PANIC HE SAID TWICE"
    assert to_transcript("'Tis a well-known   fact; isn't it?") == "TIS A WELL KNOWN FACT ISN'T IT"
    assert to_transcript("The dogs' bowls (empty).") == "THE DOGS BOWLS EMPTY"


def test_sentences_from_entry_keeps_only_clean_sentences():
    entry = ("The b\bbo\bol\bld cat sat on the _\bmat.  It was happy!\n"
             "Mr. Smith paid 5 dollars.  NASA called today.  We met at the café today.\n"
             "Too short.  It is a test e.g. of abbreviations.  The naïve way works fine.\n"
             "\t\t-- Some Author, in a book that nobody read\n")
    assert sentences_from_entry(entry) == ["The bold cat sat on the mat.", "It was happy!",
                                           "We met at the cafe today.", "The naive way works fine."]
    assert sentences_from_entry("one two three four.") == []  # no capital: a fragment
    assert sentences_from_entry("We don\u00e2\u20ac\u2122t read mojibake here.") == []
    assert sentences_from_entry(" ".join(["Word"] + ["word"] * 20) + ".") == []  # 21 words


def test_split_is_a_stable_hash_and_disjoint():
    # fixed answers: Python's salted hash() would change them from one process to the next
    assert [assign_split(s) for s in ("Hello world again.", "The sun is warm.", "My dog eats bread.")] \
        == ["train", "dev", "test"]
    assert assign_split("hello, WORLD again") == assign_split("Hello world again.")
    parts = sentences.split_sentences([f"Sentence number {w} here." for w in ("one", "two", "six")] * 2,
                                      {"dev": 0.5, "test": 0.25})
    assert sum(map(len, parts.values())) == 6
    assert len({s for p in parts.values() for s in set(p)}) == 3  # duplicates land in one split


def test_fortune_sentences_follow_the_rules():
    _require_file(sentences.FORTUNES_DIR, "fortunes")
    found = sentences.fortune_sentences()
    assert len(found) > 10_000
    transcripts = [to_transcript(s) for s in found]
    assert len(set(transcripts)) == len(transcripts)
    for transcript in transcripts:
        assert TRANSCRIPT.fullmatch(transcript), transcript
        assert 3 <= len(transcript.split()) <= 20
    assert not any(re.search(r"\d", s) for s in found)
    pools = sentences.corpus_sentences()
    keys = {split: {to_transcript(s) for s in pool} for split, pool in pools.items()}
    assert not keys["train"] & keys["dev"]
    assert not keys["train"] & keys["test"]
    assert not keys["dev"] & keys["test"]
    assert all(len(keys[s]) > 1000 for s in SPLITS)


def test_missing_text_sources_name_the_package(tmp_path):
    with pytest.raises(SourceError, match="'fortunes'"):
        sentences.fortune_sentences(tmp_path / "fortunes")
    with pytest.raises(SourceError, match="'wamerican'"):
        sentences.dictionary_words(tmp_path / "words")


# --- speakers and plan (no synthesis) -----------------------------------------------------------------


def test_variants_are_split_by_name_without_the_unintelligible_ones():
    installed = sorted({*voices.HELD_OUT_VARIANTS["dev"], *voices.HELD_OUT_VARIANTS["test"],
                        "m1", "f1", "klatt", "whisper", "croak"})
    parts = voices.split_variants(installed)
    assert {"m1", "f1", "klatt", "default"} <= set(parts["train"])
    assert not {"whisper", "croak"} & {v for p in parts.values() for v in p}
    assert not set(parts["train"]) & set(parts["dev"])
    assert not set(parts["dev"]) & set(parts["test"])
    assert not set(parts["train"]) & set(parts["test"])


def test_plan_holds_out_voices_and_keeps_clear_voices_in_the_majority(tmp_path):
    _require_file(sentences.FORTUNES_DIR, "fortunes")
    installed = sorted({*voices.HELD_OUT_VARIANTS["dev"], *voices.HELD_OUT_VARIANTS["test"], "m1", "f1"})
    speakers, jobs = plan_corpus(tmp_path, CorpusConfig(4000, 3), installed)
    assert len({s.id for s in speakers}) == len(speakers)
    voices_of = {split: {(s.engine, s.voice, s.variant) for s in speakers if s.split == split}
                 for split in SPLITS}
    assert not voices_of["train"] & voices_of["dev"]
    assert not voices_of["train"] & voices_of["test"]
    assert not voices_of["dev"] & voices_of["test"]
    for split in SPLITS:
        ours = [s for s in speakers if s.split == split]
        assert 0.5 < sum(s.engine != "espeak-ng" for s in ours) / len(ours) < 0.75
    assert {j.speaker.split for j in jobs} == set(SPLITS)
    assert len({j.utt_id for j in jobs}) == 4000
    assert all(re.fullmatch(r"(\d+)-\1\d-\d{4}", j.utt_id) for j in jobs)
    assert max(len({j.utt_id.split("-")[1] for j in jobs if j.speaker == s}) for s in speakers) == 3


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(CorpusConfigError):
        CorpusConfig(2, 0).counts()
    assert main(["synth", "speech", "--out", str(tmp_path), "--num", "2", "--seed", "1"]) == 2
    assert "leaves no training utterance" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["synth", "speech", "--out", str(tmp_path), "--num", "9", "--seed", "1", "--dev-fraction", "2"])
    assert info.value.code == 2


def test_missing_engine_names_the_debian_package(tmp_path, monkeypatch, capsys):
    real_which = shutil.which
    monkeypatch.setattr(voices.shutil, "which", lambda name: None if name == "flite" else real_which(name))
    with pytest.raises(voices.EngineError, match=r"install the Debian package.* flite"):
        voices.check_engines()
    assert main(["synth", "speech", "--out", str(tmp_path / "c"), "--num", "10", "--seed", "1"]) == 2
    assert "flite not found: install the Debian package(s) flite" in capsys.readouterr().err


# --- generation ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 utterances (12 train, 6 dev, 6 test) made with two worker processes."""
    _require_engines()
    out = tmp_path_factory.mktemp("synth") / "corpus"
    assert main(["synth", "speech", "--out", str(out), "--seed", "7", "--jobs", "2", *ARGS]) == 0
    return out


def _speakers(out: Path) -> dict[str, list[str]]:
    rows = [line.split(" | ") for line in (out / "SPEAKERS.TXT").read_text().splitlines()[1:]]
    return {row[0]: row for row in rows}


def _audio(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: sf.read(p, dtype="int16")[0] for p in sorted(out.rglob("*.flac"))}


def _transcripts(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.trans.txt"))}


@pytest.mark.slow
def test_corpus_reads_back_as_librispeech(corpus):
    counts = {}
    for split in SPLITS:
        utts = scan_librispeech(corpus / split)
        counts[split] = len(utts)
        for utt in utts:
            assert re.fullmatch(r"\d+-\d+-\d{4}", utt.id)
            assert TRANSCRIPT.fullmatch(utt.transcript), utt.transcript
            info = sf.info(str(utt.path))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            assert 0.1 < utt.seconds / len(utt.transcript.split()) < 1.7, (utt.id, utt.seconds)
    assert counts == {"train": 12, "dev": 6, "test": 6}
    info = json.loads((corpus / "synth.json").read_text())
    assert info["counts"] == counts
    assert (info["failed"], info["seed"], info["num"]) == ([], 7, 24)
    assert "festival" in info["held_out"]


@pytest.mark.slow
def test_corpus_speakers_and_sentences_are_disjoint_across_splits(corpus):
    speakers = _speakers(corpus)
    by_split = {s: [row for row in speakers.values() if row[1] == s] for s in SPLITS}
    ids = {s: {p.name for p in (corpus / s).iterdir()} for s in SPLITS}
    for split in SPLITS:
        assert ids[split] == {row[0] for row in by_split[split]}
        assert {row[2] for row in by_split[split]} >= {"espeak-ng"}  # espeak variety in every split
        assert {row[2] for row in by_split[split]} & {"flite", "festival"}  # and a clear voice
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not ids[a] & ids[b]
        assert not {tuple(r[2:5]) for r in by_split[a]} & {tuple(r[2:5]) for r in by_split[b]}
        texts = [{u.transcript for u in scan_librispeech(corpus / s)} for s in (a, b)]
        assert not texts[0] & texts[1]


@pytest.mark.slow
def test_same_seed_same_corpus_whatever_the_jobs_and_resume(corpus, tmp_path, capsys):
    again = tmp_path / "again"
    assert main(["synth", "speech", "--out", str(again), "--seed", "7", "--jobs", "1", *ARGS]) == 0
    assert _transcripts(again) == _transcripts(corpus)
    audio, reference = _audio(again), _audio(corpus)
    assert audio.keys() == reference.keys()
    assert all(np.array_equal(audio[k], reference[k]) for k in audio)
    assert (again / "SPEAKERS.TXT").read_bytes() == (corpus / "SPEAKERS.TXT").read_bytes()
    # an interrupted run: one file lost, the journal cut mid-line; a rerun fills the gap identically
    victim = next(iter(sorted(again.rglob("*.flac"))))
    victim.unlink()
    journal = again / ".synth-journal.jsonl"
    journal.write_bytes(journal.read_bytes()[:-20])
    assert main(["synth", "speech", "--out", str(again), "--seed", "7", "--jobs", "1", *ARGS]) == 0
    assert np.array_equal(sf.read(victim, dtype="int16")[0], reference[victim.stem])
    assert _transcripts(again) == _transcripts(corpus)
    # other settings into the same folder: refused
    assert main(["synth", "speech", "--out", str(again), "--seed", "8", *ARGS]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_another_seed_gives_another_corpus(corpus, tmp_path):
    other = tmp_path / "other"
    assert main(["synth", "speech", "--out", str(other), "--seed", "8", "--jobs", "1", *ARGS]) == 0
    assert _transcripts(other) != _transcripts(corpus)
    assert (other / "SPEAKERS.TXT").read_text() != (corpus / "SPEAKERS.TXT").read_text()


@pytest.mark.slow
def test_a_failed_utterance_exits_1_and_a_rerun_fills_it(tmp_path, monkeypatch, capsys):
    _require_engines()
    real = speech.synthesize_utterance

    def broken_once(path, *args):
        if Path(path).stem == "100-1000-0000":
            raise RuntimeError("engine exploded")
        return real(path, *args)

    monkeypatch.setattr(speech, "synthesize_utterance", broken_once)
    args = ["synth", "speech", "--out", str(tmp_path), "--num", "6", "--seed", "3", "--jobs", "1",
            "--dev-fraction", "0.25", "--test-fraction", "0.25"]
    assert main(args) == 1
    assert "5 ok, 1 failed" in capsys.readouterr().err
    assert json.loads((tmp_path / "synth.json").read_text())["failed"] == ["100-1000-0000"]
    assert [u.id for u in scan_librispeech(tmp_path / "train")] == ["101-1010-0000"]
    monkeypatch.undo()
    assert main(args) == 0
    assert [u.id for u in scan_librispeech(tmp_path / "train")] == ["100-1000-0000", "101-1010-0000"]
