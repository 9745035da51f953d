"""TTS voices and the synthesis of one utterance for :mod:`data.synth.speech`.

Engines (platform.md §13): espeak-ng (8 English accents x variants, 22.05 kHz), flite (``rms``,
``awb``, ``slt``, ``kal16``; 16 kHz) and festival's ``text2wave`` with ``kal_diphone`` (16 kHz). Each
reads its text on stdin and writes a WAV file in a private temporary folder; no shell is involved.
Personas map to engine settings as follows (all measured on this platform):

- espeak-ng: ``-s 175*speed`` words per minute, ``-p 50*pitch`` (0-99 scale, default 50);
- flite: ``duration_stretch = 1/speed``, ``f0_shift = pitch`` (``rms`` ignores pitch settings);
- festival: ``Duration_Stretch = 1.1/speed`` (1.1 is kal_diphone's own default) and the target F0
  mean and deviation of ``int_lr_params`` (105 Hz, 14 Hz) times ``pitch``.

The audio chain of an utterance: engine rate -> 16 kHz mono (``data.audio.load_audio``, which
resamples with torchaudio), leading and trailing silence trimmed to 0.2 s, then the utterance's speed
perturbation (resampling again), noise and gain.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio import SAMPLE_RATE, AudioError, load_audio
from .sentences import to_transcript

__all__ = ["ACCENTS", "CLEAR_VOICES", "EXCLUDED_VARIANTS", "HELD_OUT_VARIANTS", "EngineError", "Speaker",
           "SynthError", "available_variants", "check_engines", "split_variants", "synthesize_utterance"]

logger = logging.getLogger(__name__)

ACCENTS = ("en-us", "en-us-nyc", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-029")
CLEAR_VOICES = {"train": (("flite", "rms"), ("flite", "awb"), ("flite", "slt")),
                "dev": (("flite", "kal16"),),
                "test": (("festival", "kal_diphone"),)}
HELD_OUT_VARIANTS = {
    "dev": ("iven", "iven2", "iven3", "iven4", "aunty", "belinda", "linda", "f4", "Mario", "Michael",
            "gustave", "klatt5"),
    "test": ("steph", "steph2", "steph3", "f2", "f5", "m7", "m8", "Nguyen", "Gene", "Gene2", "klatt4"),
}
EXCLUDED_VARIANTS = frozenset(
    ["whisper", "whisperf", "caleb", "victor"]  # unvoiced or breathy (voicing <= 60, breath)
    + ["croak", "grandma", "grandpa"]  # flutter 20: a heavy tremolo
    + ["Demonic", "announcer", "UniRobot", "anikaRobot", "RicishayMax", "RicishayMax2", "RicishayMax3"]
    + [f"robosoft{n}" for n in ("", 2, 3, 4, 5, 6, 7, 8)]  # long echoes, robot and radio effects
    + ["zac", "fast", "Tweaky", "Jacky", "kaukovalta"]  # pitch 240-390, speed override, odd formants
)
# Debian packages per executable, for the error message when one is missing.
PACKAGES = {"espeak-ng": "espeak-ng espeak-ng-data", "flite": "flite",
            "text2wave": "festival festlex-cmu festvox-kallpc16k"}
TIMEOUT = 60  # seconds per engine call; a normal sentence takes well under one
SILENT_PEAK = 1e-3  # engine output whose peak stays below this is rejected as silent
SECONDS_PER_WORD = (0.12, 1.5)  # outside this an engine has spelled, skipped or garbled words
KEEP_SILENCE = 0.2  # seconds kept before and after the speech when trimming


class EngineError(RuntimeError):
    """A TTS engine or voice is missing or broken; the message names the Debian packages."""


class SynthError(RuntimeError):
    """One synthesis failed (engine error, timeout, silent or implausible output)."""


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: engine voice + variant + a fixed persona."""

    id: int
    split: str
    engine: str  # "espeak-ng", "flite" or "festival"
    voice: str  # espeak-ng accent, flite voice or festival voice
    variant: str  # espeak-ng variant ("default" for none), "-" for the other engines
    speed: float  # speaking-rate factor, 1.0 = the voice's default
    pitch: float  # F0 factor, 1.0 = the voice's default

    def command(self, wav: str) -> list[str]:
        """The engine's argument vector writing ``wav``; the text goes to stdin."""
        if self.engine == "espeak-ng":
            name = self.voice if self.variant == "default" else f"{self.voice}+{self.variant}"
            return ["espeak-ng", "-v", name, "-s", str(round(175 * self.speed)),
                    "-p", str(min(99, round(50 * self.pitch))), "--stdin", "-w", wav]
        if self.engine == "flite":
            return ["flite", "-voice", self.voice, "--setf", f"duration_stretch={1 / self.speed:.3f}",
                    "--setf", f"f0_shift={self.pitch:.3f}", "-f", "/dev/stdin", "-o", wav]
        lr_params = (f"'((target_f0_mean {105 * self.pitch:.1f}) (target_f0_std {14 * self.pitch:.1f}) "
                     "(model_f0_mean 170) (model_f0_std 34))")
        return ["text2wave", "-eval", f"(voice_{self.voice})",
                "-eval", f"(Parameter.set 'Duration_Stretch {1.1 / self.speed:.3f})",
                "-eval", f"(set! int_lr_params {lr_params})", "-o", wav]


def available_variants() -> list[str]:
    """espeak-ng's installed variant names (voice files under ``!v``), sorted.

    Raises:
        EngineError: espeak-ng is missing.
    """
    _require("espeak-ng")
    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True,
                             timeout=TIMEOUT, check=False).stdout
    # the File column is "!v/<name>", optionally followed by "(<language> <priority>)"
    names = {m.group(1).strip() for m in re.finditer(r"!v/(.+?)\s*(?:\(.*\))?$", listing, re.MULTILINE)}
    return sorted(n for n in names if " " not in n)  # "Mr serious": not addressable as "+name"


def split_variants(variants: list[str]) -> dict[str, list[str]]:
    """espeak-ng variants per split: the held-out lists, and every other usable one for train.

    Args:
        variants: installed variants (``available_variants()``).

    Returns:
        ``{"train": ["default", ...], "dev": [...], "test": [...]}``, disjoint, each non-empty.

    Raises:
        EngineError: a split would have no espeak-ng variant left.
    """
    installed = set(variants)
    held = {v for names in HELD_OUT_VARIANTS.values() for v in names}
    out = {"train": ["default"] + [v for v in variants if v not in held and v not in EXCLUDED_VARIANTS]}
    for split, names in HELD_OUT_VARIANTS.items():
        missing = sorted(set(names) - installed)
        if missing:
            logger.warning("espeak-ng variants missing from this install: %s", ", ".join(missing))
        out[split] = [v for v in names if v in installed]
        if not out[split]:
            raise EngineError(f"no espeak-ng variant of the {split} split is installed; "
                              "install the Debian package espeak-ng-data")
    return out


def _require(executable: str) -> None:
    if shutil.which(executable) is None:
        raise EngineError(f"{executable} not found: install the Debian package(s) {PACKAGES[executable]}")


def check_engines() -> None:
    """Check that every engine and voice of the speaker tables synthesises a word.

    Raises:
        EngineError: a missing executable or voice, naming the Debian packages to install.
    """
    for executable in PACKAGES:
        _require(executable)
    voices = [("espeak-ng", "en-us", "default")] + [
        (engine, voice, "-") for pairs in CLEAR_VOICES.values() for engine, voice in pairs]
    for engine, voice, variant in voices:
        speaker = Speaker(0, "train", engine, voice, variant, 1.0, 1.0)
        try:
            _synthesize(speaker, "Hello there.")
        except SynthError as exc:
            executable = speaker.command("x.wav")[0]
            raise EngineError(f"{engine} voice {voice} does not work ({exc}); install the Debian "
                              f"package(s) {PACKAGES[executable]}") from exc


def _synthesize(speaker: Speaker, text: str) -> np.ndarray:
    """Run the engine; returns `(T,)` float32 at 16 kHz, trimmed. Raises SynthError."""
    with tempfile.TemporaryDirectory(prefix="synth-") as tmp:
        wav = str(Path(tmp) / "out.wav")
        try:
            proc = subprocess.run(speaker.command(wav), input=text + "\n", capture_output=True,
                                  text=True, timeout=TIMEOUT, check=False, cwd=tmp)
        except subprocess.TimeoutExpired as exc:
            raise SynthError(f"{speaker.engine} timed out after {TIMEOUT} s") from exc
        if proc.returncode != 0 or not Path(wav).is_file():
            raise SynthError(f"{speaker.engine} exit {proc.returncode}: {proc.stderr.strip()[-200:]}")
        try:
            wave = load_audio(wav).numpy()  # (T,) mono at 16 kHz, whatever the engine's rate
        except AudioError as exc:
            raise SynthError(f"{speaker.engine}: {exc}") from exc
    if np.abs(wave).max() < SILENT_PEAK:
        raise SynthError(f"{speaker.engine} produced silence")
    return _trim(wave)


def _trim(wave: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence down to ``KEEP_SILENCE`` (frames 45 dB below the loudest)."""
    hop = SAMPLE_RATE // 100  # 10 ms frames
    frames = wave[: len(wave) // hop * hop].reshape(-1, hop)  # (F, 160)
    if len(frames) == 0:
        return wave
    energy = np.square(frames).mean(axis=1)  # (F,)
    voiced = np.flatnonzero(energy > energy.max() * 10 ** (-45 / 10))
    keep = int(KEEP_SILENCE * SAMPLE_RATE)
    start = max(0, voiced[0] * hop - keep)
    stop = min(len(wave), (voiced[-1] + 1) * hop + keep)
    return wave[start:stop]


def _augment(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speed perturbation, additive noise (most utterances) and gain, all drawn from ``rng``."""
    speed = int(rng.integers(90, 111))  # percent; whole percents keep the resampling kernel small
    # played back at 16 kHz, samples recorded at speed% of it sound speed% faster (and higher)
    wave = load_audio(wave, sample_rate=SAMPLE_RATE * speed // 100).numpy()
    if rng.random() < 0.8:
        snr_db = rng.uniform(15, 40)
        size = 1 << (len(wave) - 1).bit_length()  # a power of two: the FFT of a prime length is slow
        noise = rng.standard_normal(size)
        if rng.random() < 0.5:  # pink: 1/f power, shaped in the frequency domain
            spectrum = np.fft.rfft(noise)
            spectrum[0] = 0.0  # no DC offset
            spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
            noise = np.fft.irfft(spectrum, n=size)
        noise = noise[: len(wave)]
        scale = np.sqrt(np.mean(np.square(wave)) / (np.mean(np.square(noise)) * 10 ** (snr_db / 10)))
        wave = wave + scale * noise
    peak_db = rng.uniform(-20, -1)  # the loudness of LibriSpeech varies too
    return (wave * (10 ** (peak_db / 20) / np.abs(wave).max())).astype(np.float32)


def _write_flac(path: Path, wave: np.ndarray) -> None:
    """Write 16 kHz PCM_16 FLAC under a temporary name, then rename: no half-written file survives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    sf.write(str(tmp), wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    tmp.replace(path)


def synthesize_utterance(path: str, speaker: Speaker, sentences: tuple[str, ...],
                         seed: tuple[int, ...]) -> tuple[str, str | None, float, str]:
    """Synthesise, augment and write one utterance, trying the sentences in order.

    Args:
        path: the FLAC file to write; its stem is the utterance id.
        speaker: who speaks.
        sentences: candidates; the next one is tried when the engine fails or the output is
            silent or implausibly long or short for its words.
        seed: the utterance's generator seed, e.g. ``(seed, split code, 0, index)``.

    Returns:
        ``(utt_id, transcript, seconds, "")`` on success, ``(utt_id, None, 0.0, error)`` otherwise.
    """
    utt_id = Path(path).stem
    errors = []
    for sentence in sentences:
        transcript = to_transcript(sentence)
        try:
            wave = _synthesize(speaker, sentence)
            seconds_per_word = len(wave) / SAMPLE_RATE / len(transcript.split())
            if not SECONDS_PER_WORD[0] <= seconds_per_word <= SECONDS_PER_WORD[1]:
                raise SynthError(f"{seconds_per_word:.2f} s per word for {transcript!r}")
        except SynthError as exc:
            logger.debug("%s: %s; trying the next sentence", utt_id, exc)
            errors.append(str(exc))
            continue
        # the generator is seeded per utterance and used only here: a retry does not shift it
        wave = _augment(wave, np.random.default_rng(list(seed)))
        _write_flac(Path(path), wave)
        return utt_id, transcript, len(wave) / SAMPLE_RATE, ""
    return utt_id, None, 0.0, "; ".join(errors)
