"""LibriSpeech-layout reading and duration bucketing (samba-asr.md §13.7: A1 loader part, A5).

The corpus fixture holds tones, not speech: these tests check the layout handling; the synthetic
speech corpus (``recognizers synth speech``) arrives with the rest of the speech issue.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from data.datasets.librispeech import CorpusError, LibriSpeechDataset, bucket_batches, scan_librispeech

SPEAKERS = {"19": {"198": ["HELLO WORLD", "IT'S A TEST"]}, "2277": {"149896": ["ONE", "TWO", "THREE"]}}


def _write_corpus(root, rate=16000):
    for spk, chapters in SPEAKERS.items():
        for chap, texts in chapters.items():
            folder = root / spk / chap
            folder.mkdir(parents=True)
            lines = []
            for k, text in enumerate(texts):
                utt = f"{spk}-{chap}-{k:04d}"
                t = np.arange(int(rate * (0.5 + 0.25 * k))) / rate
                sf.write(folder / f"{utt}.flac", 0.3 * np.sin(2 * np.pi * 300 * t), rate)
                lines.append(f"{utt} {text}")
            (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")


def test_reads_every_utterance_with_ids_and_transcripts(tmp_path):
    root = tmp_path / "LibriSpeech" / "test-clean"
    _write_corpus(root)
    utts = scan_librispeech(root)
    assert [u.id for u in utts] == ["19-198-0000", "19-198-0001", "2277-149896-0000", "2277-149896-0001",
                                    "2277-149896-0002"]
    assert [u.transcript for u in utts][:2] == ["HELLO WORLD", "IT'S A TEST"]
    assert utts[3].speaker == "2277"
    assert utts[1].seconds == pytest.approx(0.75)
    assert len(scan_librispeech(tmp_path)) == 5  # a folder above the split works too
    wave, text, utt_id = LibriSpeechDataset(root)[0]
    assert wave.shape == (8000,)
    assert (text, utt_id) == ("HELLO WORLD", "19-198-0000")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "19/198/19-198.trans.txt").write_text("19-198-0000\n"), "19-198.trans.txt:1"),
        (lambda r: (r / "19/198/19-198.trans.txt").write_text("7-1-0000 HI\n"), "expected"),
        (lambda r: (r / "19/198/19-198-0001.flac").unlink(), "no audio file for 19-198-0001"),
        (lambda r: (r / "19/198/19-198-0000.flac").write_bytes(b"junk"), "19-198-0000.flac"),
    ],
)
def test_layout_errors_name_the_file(tmp_path, damage, message):
    _write_corpus(tmp_path)
    damage(tmp_path)
    with pytest.raises(CorpusError, match=message):
        scan_librispeech(tmp_path)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match=r"no '<speaker>-<chapter>\.trans\.txt'"):
        scan_librispeech(tmp_path)


def test_bucketing_budget_coverage_and_seed():
    """A5: padded seconds per batch within budget (unless one utterance exceeds it alone), every
    utterance exactly once, similar durations together, deterministic for a seed."""
    rng = np.random.default_rng(0)
    seconds = [*rng.uniform(1, 20, size=300).tolist(), 45.0]
    batches = bucket_batches(seconds, max_seconds=60.0, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(seconds)))
    for b in batches:
        assert len(b) * max(seconds[i] for i in b) <= 60.0 or len(b) == 1
        assert max(seconds[i] for i in b) - min(seconds[i] for i in b) < 10.0
    assert batches == bucket_batches(seconds, max_seconds=60.0, seed=3)
    assert batches != bucket_batches(seconds, max_seconds=60.0, seed=4)
    assert [b for b in batches if 300 in b] == [[300]]
