"""LibriSpeech-layout corpora (real or synthetic) and duration-bucketed batching (samba-asr.md §8.1, §8.6).

Layout (interfaces.md): ``ROOT/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` plus one
``<speaker>-<chapter>.trans.txt`` per chapter with lines ``<utt-id> TRANSCRIPT``. ROOT is a split
folder (``LibriSpeech/test-clean``) or any folder above chapter folders; every ``*.trans.txt`` below it
is read. Audio may be any format soundfile reads (the synthetic corpora use 16 kHz FLAC).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
from torch.utils.data import Dataset

from ..audio import AudioError, load_audio

__all__ = ["AUDIO_SUFFIXES", "CorpusError", "LibriSpeechDataset", "Utterance", "bucket_batches",
           "scan_librispeech"]

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3")


class CorpusError(ValueError):
    """A corpus that does not follow the layout; the message names the file and the problem."""


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance of a LibriSpeech-layout corpus."""

    id: str  # "<speaker>-<chapter>-<utt>"
    path: Path  # audio file
    transcript: str  # as stored (LibriSpeech: upper case)
    seconds: float  # duration, from the file header

    @property
    def speaker(self) -> str:
        return self.id.split("-")[0]


def _audio_for(folder: Path, utt_id: str) -> Path | None:
    for suffix in AUDIO_SUFFIXES:
        candidate = folder / f"{utt_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _read_transcripts(trans: Path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt_id, _, text = line.strip().partition(" ")
        chapter = utt_id.rsplit("-", 1)[0]
        if not text.strip() or utt_id.count("-") != 2 or trans.name != f"{chapter}.trans.txt":
            raise CorpusError(f"{trans}:{number}: expected '<speaker>-<chapter>-<utt> TRANSCRIPT' "
                              f"for this chapter, got {line.strip()[:80]!r}")
        pairs.append((utt_id, text.strip()))
    return pairs


def scan_librispeech(root: str | Path) -> list[Utterance]:
    """Find every utterance below ``root``, sorted by id.

    Raises:
        CorpusError: no transcripts, a malformed transcript line, or a transcript without audio.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root}: not a folder")
    utterances = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for utt_id, text in _read_transcripts(trans):
            audio = _audio_for(trans.parent, utt_id)
            if audio is None:
                raise CorpusError(f"{trans}: no audio file for {utt_id} ({'/'.join(AUDIO_SUFFIXES)})")
            try:
                info = sf.info(str(audio))
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise CorpusError(f"{audio}: cannot read audio header ({exc})") from exc
            utterances.append(Utterance(utt_id, audio, text, info.frames / info.samplerate))
    if not utterances:
        raise CorpusError(f"{root}: no '<speaker>-<chapter>.trans.txt' files found (LibriSpeech layout)")
    return sorted(utterances, key=lambda u: u.id)


class LibriSpeechDataset(Dataset):
    """Utterances of a LibriSpeech-layout folder as (waveform `(T,)` 16 kHz, transcript, id)."""

    def __init__(self, root: str | Path) -> None:
        self.utterances = scan_librispeech(root)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        utt = self.utterances[index]
        try:
            wave = load_audio(utt.path)
        except AudioError as exc:
            raise CorpusError(f"{utt.id}: {exc}") from exc
        return wave, utt.transcript, utt.id


def bucket_batches(seconds: list[float], max_seconds: float, *, shuffle: bool = True,
                   seed: int = 0) -> list[list[int]]:
    """Group utterances of similar duration so that each batch's padded length stays within budget.

    Utterances are sorted by duration and cut into batches whose size times the longest duration
    (the padded work of a scan) stays within ``max_seconds``; an utterance longer than the budget
    gets a batch of its own. The order of the batches is shuffled (seeded), not their content.

    Args:
        seconds: duration of each utterance.
        max_seconds: budget of padded seconds per batch.
        shuffle: shuffle the batch order.
        seed: seed of that shuffle.

    Returns:
        Lists of indices; every index appears exactly once.
    """
    if max_seconds <= 0:
        raise ValueError(f"bucket_batches: max_seconds must be > 0, got {max_seconds}")
    order = sorted(range(len(seconds)), key=lambda i: seconds[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted ascending, so seconds[i] is the longest of current + [i]
        if current and (len(current) + 1) * seconds[i] > max_seconds:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches
