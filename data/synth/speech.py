"""Multi-speaker synthetic speech in the LibriSpeech layout (``recognizers synth speech``).

Sentences come from :mod:`data.synth.sentences`; speech from the Debian TTS engines espeak-ng, flite
and festival (platform.md §13). A *speaker* is an engine voice and variant plus a persona (a speed
and a pitch factor, 1.0 = the voice's default) fixed for that speaker. Every utterance then gets its
own speed perturbation (0.9-1.1, by resampling), gain and, for 80 % of them, white or pink noise at
15-40 dB SNR. Output: ``OUT/{train,dev,test}/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``
(16 kHz, PCM_16) with ``<speaker>-<chapter>.trans.txt``, plus ``OUT/SPEAKERS.TXT`` and ``OUT/synth.json``.

Held-out speakers. No (engine, voice, variant) appears in two splits:

============  ======================  ====================================================================
split         clear voices            espeak-ng (any of the 8 English accents) variants
============  ======================  ====================================================================
train         flite rms, awb, slt     the default voice and every other installed variant not listed below
dev           flite kal16             iven, iven2, iven3, iven4, aunty, belinda, linda, f4, Mario, Michael,
                                      gustave, klatt5
test          festival kal_diphone    steph, steph2, steph3, f2, f5, m7, m8, Nguyen, Gene, Gene2, klatt4
============  ======================  ====================================================================

What that holds out, and what it does not:

- The clear voices of dev and test are recordings never heard in train. Dev and test share one
  recorded speaker, though: flite ``kal16`` and festival ``kal_diphone`` are built from the same CMU
  "kal" diphone recordings (with different engines, prosody models and signal processing), so dev
  is a close proxy of test's clear part, not an independent speaker.
- espeak-ng variants are disjoint by name, and the variant files that share formant settings stay
  in one split (steph*, iven*, Gene*, m7/m8/Nguyen, f2/f5, aunty/belinda/linda/f4,
  Mario/Michael/gustave). The accents (pronunciation rules) are shared by all splits, and every
  variant is the same formant synthesiser re-tuned: an unseen variant is a much weaker hold-out than
  an unseen recorded voice. The Klatt synthesiser of klatt4/klatt5 also drives train variants.
- Personas come from the same ranges in every split; they are not held out. flite ``rms`` ignores
  pitch settings (measured), so its speakers differ by speed only.

Excluded from every split (``EXCLUDED_VARIANTS``): variants that are whispered or breathy, croaking,
echoing or robotic, or novelty voices, judged from their voice-file parameters (voicing, breath,
flutter, echo, extreme pitch or formants), since nobody listened to them.

Speakers are 60 % clear voices, 40 % espeak-ng. Every random choice comes from one generator per
speaker or utterance, seeded with (seed, split, index), so the corpus is the same for any number of
worker processes. Utterance files are written atomically and listed in ``OUT/.synth-journal.jsonl``,
so an interrupted run resumes where it stopped when rerun with the same settings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from .runner import JOURNAL, read_journal, run_chunks, write_text
from .sentences import SPLITS, corpus_sentences
from .voices import (
    ACCENTS,
    CLEAR_VOICES,
    HELD_OUT_VARIANTS,
    Speaker,
    available_variants,
    check_engines,
    split_variants,
    synthesize_utterance,
)

__all__ = ["VERSION", "CorpusConfig", "CorpusConfigError", "SynthSummary", "held_out_rule", "plan_corpus",
           "synthesize_corpus"]

VERSION = 1  # bump when the output for a given seed changes
UTTS_PER_SPEAKER = 40
UTTS_PER_CHAPTER = 15
MAX_CHAPTERS = 3
MAX_ATTEMPTS = 5  # sentences tried per utterance before it counts as failed
CHUNK = 8  # utterances per worker task: few enough for an even spread, enough to hide the IPC
SPLIT_CODES = {"train": 0, "dev": 1, "test": 2}
FIRST_SPEAKER_ID = 100

logger = logging.getLogger(__name__)


class CorpusConfigError(ValueError):
    """Sizes that leave a split empty, or an output folder made with other settings."""


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that decides the content of a corpus (the number of workers does not)."""

    num: int
    seed: int
    dev_fraction: float = 0.05
    test_fraction: float = 0.05
    version: int = VERSION

    def counts(self) -> dict[str, int]:
        """Utterances per split; a held-out split with a positive fraction gets at least one."""
        if self.seed < 0:
            raise CorpusConfigError(f"--seed must be >= 0, got {self.seed}")
        if not (0 <= self.dev_fraction < 1 and 0 <= self.test_fraction < 1):
            raise CorpusConfigError("--dev-fraction and --test-fraction must lie in [0, 1)")
        held = {s: (max(1, round(self.num * f)) if f > 0 else 0)
                for s, f in (("dev", self.dev_fraction), ("test", self.test_fraction))}
        train = self.num - held["dev"] - held["test"]
        if train < 1:
            raise CorpusConfigError(f"--num {self.num} with {held['dev']} dev and {held['test']} test "
                                    "utterances leaves no training utterance")
        return {"train": train, **held}


@dataclass(frozen=True)
class UtteranceJob:
    """One utterance to synthesise: where, by whom, which sentences to try in order."""

    utt_id: str
    path: str
    speaker: Speaker
    sentences: tuple[str, ...]
    seed: tuple[int, ...]  # (seed, split code, 0, index): the utterance's own generator


@dataclass
class SynthSummary:
    """Outcome of :func:`synthesize_corpus`."""

    counts: dict[str, int]  # utterances written per split
    failed: list[str]  # utterance ids that failed every attempt
    seconds: float  # total audio duration
    speakers: list[Speaker]


def _split_speakers(split: str, num_utts: int, seed: int, first_id: int,
                    variants: list[str]) -> list[Speaker]:
    """The speakers of one split: 3 in 5 use a clear voice, the rest espeak-ng, each with a persona."""
    count = min(num_utts, max(2, round(num_utts / UTTS_PER_SPEAKER)))
    clear, espeak = CLEAR_VOICES[split], variants
    order = np.random.default_rng([seed, SPLIT_CODES[split], 1]).permutation(len(espeak))
    speakers, num_clear, num_espeak = [], 0, 0
    for i in range(count):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], 2, i])
        speed = round(float(rng.uniform(0.85, 1.2)), 2)
        if (i * 3) % 5 < 3:  # 0, 2, 4 of every 5: clear voices are the majority
            engine, voice = clear[num_clear % len(clear)]
            pitch = 1.0 if voice == "rms" else round(float(rng.uniform(0.85, 1.2)), 2)
            speakers.append(Speaker(first_id + i, split, engine, voice, "-", speed, pitch))
            num_clear += 1
        else:  # cycle through a shuffled variant list, so small corpora still vary
            variant = espeak[int(order[num_espeak % len(espeak)])]
            accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
            pitch = round(float(rng.uniform(0.7, 1.3)), 2)
            speakers.append(Speaker(first_id + i, split, "espeak-ng", accent, variant, speed, pitch))
            num_espeak += 1
    return speakers


def _split_jobs(out: Path, split: str, speakers: list[Speaker], num_utts: int, seed: int,
                pool: list[str]) -> list[UtteranceJob]:
    """Utterances of one split: contiguous blocks per speaker, cut into up to 3 chapters."""
    order = np.random.default_rng([seed, SPLIT_CODES[split], 3]).permutation(len(pool))
    # retries step through the permutation; past what the primaries use while the pool lasts
    stride = num_utts if MAX_ATTEMPTS * num_utts <= len(pool) else len(pool) // MAX_ATTEMPTS + 1
    jobs = []
    for s, speaker in enumerate(speakers):
        start, stop = s * num_utts // len(speakers), (s + 1) * num_utts // len(speakers)
        size = stop - start
        chapters = min(MAX_CHAPTERS, math.ceil(size / UTTS_PER_CHAPTER))
        for j in range(size):
            chapter = j * chapters // size
            first = -(-chapter * size // chapters)  # first j of this chapter (ceil division)
            chapter_id = speaker.id * 10 + chapter
            utt_id = f"{speaker.id}-{chapter_id}-{j - first:04d}"
            k = start + j
            # the k-th utterance speaks sentence k of a seeded permutation, so utterances share no
            # sentence until the pool is used up (then it wraps around, with other speakers)
            tries = tuple(pool[int(order[(k + a * stride) % len(pool)])] for a in range(MAX_ATTEMPTS))
            path = out / split / str(speaker.id) / str(chapter_id) / f"{utt_id}.flac"
            jobs.append(UtteranceJob(utt_id, str(path), speaker, tries, (seed, SPLIT_CODES[split], 0, k)))
    return jobs


def plan_corpus(out: str | Path, config: CorpusConfig,
                variants: list[str]) -> tuple[list[Speaker], list[UtteranceJob]]:
    """Speakers and utterance jobs of the whole corpus; no synthesis.

    Args:
        out: corpus root.
        config: size, seed and split fractions.
        variants: installed espeak-ng variants (``voices.available_variants()``).

    Returns:
        Speakers (ids unique across splits, from 100) and jobs in (split, index) order.
    """
    pools = corpus_sentences()
    by_split = split_variants(variants)
    speakers: list[Speaker] = []
    jobs: list[UtteranceJob] = []
    for split, num_utts in config.counts().items():
        if num_utts == 0:
            continue
        ours = _split_speakers(split, num_utts, config.seed, FIRST_SPEAKER_ID + len(speakers),
                               by_split[split])
        speakers += ours
        jobs += _split_jobs(Path(out), split, ours, num_utts, config.seed, pools[split])
    return speakers, jobs


def _run_chunk(jobs: list[UtteranceJob]) -> list[tuple[str, str | None, float, str]]:
    """Worker task: ``(utt_id, transcript or None, seconds, error)`` per job."""
    results = []
    for job in jobs:
        try:
            results.append(synthesize_utterance(job.path, job.speaker, job.sentences, job.seed))
        except Exception as exc:  # one broken utterance must not end the run; it is reported
            results.append((job.utt_id, None, 0.0, f"{type(exc).__name__}: {exc}"))
    return results


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core already; threads would only contend


def _read_journal(out: Path, config: CorpusConfig) -> dict[str, tuple[str, float]]:
    """Finished utterances of an earlier run with the same config: ``{utt_id: (transcript, s)}``.

    Raises:
        CorpusConfigError: ``out`` holds a corpus made with other settings.
    """
    entries = read_journal(out, asdict(config), CorpusConfigError)
    return {entry["id"]: (entry["transcript"], entry["seconds"]) for entry in entries}


def _execute(pending: list[UtteranceJob], jobs: int, journal: TextIO, progress) -> list[tuple]:
    """Run the jobs (in worker processes when it pays), journaling each finished utterance."""
    chunks = [pending[i:i + CHUNK] for i in range(0, len(pending), CHUNK)]
    results = []

    def record(chunk_results):
        for utt_id, transcript, seconds, _ in chunk_results:
            if transcript is not None:
                journal.write(json.dumps({"id": utt_id, "transcript": transcript,
                                          "seconds": seconds}) + "\n")
        journal.flush()
        results.extend(chunk_results)
        progress.update(len(chunk_results))

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so that the output cannot depend on --jobs
    try:
        run_chunks(_run_chunk, chunks, jobs, record, initializer=_worker_init)
    finally:
        torch.set_num_threads(threads)
    return results


def _write_index(out: Path, config: CorpusConfig, speakers: list[Speaker],
                 done: dict[str, tuple[str, float]], failed: list[str]) -> dict[str, int]:
    """Transcripts per chapter, ``SPEAKERS.TXT`` and ``synth.json``; returns utterances per split."""
    split_of = {str(s.id): s.split for s in speakers}
    chapters: dict[Path, list[str]] = defaultdict(list)
    minutes: dict[int, float] = defaultdict(float)
    counts = dict.fromkeys(SPLITS, 0)
    for utt_id in sorted(done):
        speaker, chapter, _ = utt_id.split("-")
        transcript, seconds = done[utt_id]
        chapters[out / split_of[speaker] / speaker / chapter / f"{speaker}-{chapter}.trans.txt"].append(
            f"{utt_id} {transcript}\n")
        minutes[int(speaker)] += seconds / 60
        counts[split_of[speaker]] += 1
    for path, lines in chapters.items():
        write_text(path, "".join(lines))
    rows = ["; ID | SPLIT | ENGINE | VOICE | VARIANT | SPEED | PITCH | MINUTES\n"]
    rows += [f"{s.id} | {s.split} | {s.engine} | {s.voice} | {s.variant} | {s.speed:.2f} | {s.pitch:.2f} | "
             f"{minutes[s.id]:.2f}\n" for s in speakers if s.id in minutes]
    write_text(out / "SPEAKERS.TXT", "".join(rows))
    info = {**asdict(config), "counts": counts, "failed": failed,
            "hours": round(sum(minutes.values()) / 60, 4),
            "speakers": {s: sum(1 for p in speakers if p.split == s and p.id in minutes) for s in SPLITS},
            "held_out": held_out_rule()}
    write_text(out / "synth.json", json.dumps(info, indent=2) + "\n")
    return counts


def held_out_rule() -> str:
    """The speaker hold-out of the module docstring in one paragraph (recorded in ``synth.json``)."""
    clear = "; ".join(f"{split} " + ", ".join(f"{e} {v}" for e, v in pairs)
                      for split, pairs in CLEAR_VOICES.items())
    held = "; ".join(f"{split} " + ", ".join(names) for split, names in HELD_OUT_VARIANTS.items())
    return (f"No (engine, voice, variant) appears in two splits. Clear voices: {clear}; dev and test "
            "share the CMU kal diphone recordings (flite kal16 and festival kal_diphone), which train "
            f"never uses. espeak-ng variants held out: {held}; train gets every other usable variant; "
            "variants with similar voice files stay in one split; the 8 accents are shared by all "
            "splits. Personas (speed, pitch) are drawn from the same ranges in every split.")


def synthesize_corpus(out: str | Path, config: CorpusConfig, *, jobs: int | None = None,
                      progress: bool = True) -> SynthSummary:
    """Write a synthetic LibriSpeech-layout corpus (see the module docstring).

    Args:
        out: corpus root; rerunning with the same config resumes an interrupted run.
        config: size, seed and split fractions.
        jobs: worker processes (default: all CPU cores); the output does not depend on it.
        progress: show a progress bar on stderr (when it is a terminal).

    Workers are spawned, not forked, so a script calling this with ``jobs > 1`` needs the usual
    ``if __name__ == "__main__":`` guard.

    Returns:
        Counts per split, failed utterance ids, total duration and the speakers.

    Raises:
        voices.EngineError: a TTS engine or voice is missing (names the Debian package).
        sentences.SourceError: ``fortunes`` or ``wamerican`` is missing.
        CorpusConfigError: bad sizes, or ``out`` holds a corpus made with other settings.
    """
    from tqdm import tqdm

    out = Path(out)
    config.counts()  # validate before any slow step
    check_engines()
    speakers, plan = plan_corpus(out, config, available_variants())
    paths = {j.utt_id: Path(j.path) for j in plan}
    done = {utt_id: entry for utt_id, entry in _read_journal(out, config).items()
            if utt_id in paths and paths[utt_id].is_file()}
    pending = [j for j in plan if j.utt_id not in done]
    with (out / JOURNAL).open("a") as journal, \
            tqdm(total=len(plan), initial=len(done), unit="utt", file=sys.stderr,
                 disable=None if progress else True, desc="synth speech") as bar:
        results = _execute(pending, jobs or os.cpu_count() or 1, journal, bar)
    failed = []
    for utt_id, transcript, seconds, error in results:
        if transcript is None:
            logger.warning("%s failed: %s", utt_id, error)
            failed.append(utt_id)
        else:
            done[utt_id] = (transcript, seconds)
    counts = _write_index(out, config, speakers, done, sorted(failed))
    return SynthSummary(counts, sorted(failed), sum(s for _, s in done.values()), speakers)
