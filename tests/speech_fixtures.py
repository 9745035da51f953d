"""Builders for the speech tests: a tiny untrained Samba-ASR bundle and a tree of audio files.

The session fixtures ``tiny_asr`` and ``audio_tree`` in ``conftest.py`` call these once per test run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from data.tokenizer import SentencePieceTokenizer
from recognizers.checkpoint import Bundle, save_bundle
from recognizers.samba_asr.config import SambaASRConfig, preset
from recognizers.samba_asr.model import SambaASR

RATE = 16000
_WORDS = ("THE", "QUICK", "BROWN", "FOX", "JUMPS", "OVER", "A", "LAZY", "DOG", "AND", "CAT", "SAT", "ON",
          "MAT", "WITH", "RED", "HAT", "IN", "SUN", "RAIN")


@dataclass(frozen=True)
class TinyASR:
    """A tiny randomly initialised Samba-ASR model, its tokenizer, and the bundle file holding both."""

    path: Path  # .safetensors bundle
    model: SambaASR
    tokenizer: SentencePieceTokenizer
    config: SambaASRConfig


def sentences(n: int = 30, seed: int = 0) -> list[str]:
    """``n`` short upper-case sentences (the same ones every run)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 6))) for _ in range(n)]


def build_tiny_asr(folder: Path, vocab_size: int = 40) -> TinyASR:
    """Train a tokenizer on ``sentences()``, build ``SambaASR(preset("tiny", V))`` with a fixed seed and
    save both as ``folder/tiny.safetensors``."""
    tokenizer = SentencePieceTokenizer.train(sentences(), vocab_size)
    torch.manual_seed(0)
    config = preset("tiny", tokenizer.vocab_size)
    model = SambaASR(config).eval()
    path = save_bundle(folder / "tiny.safetensors",
                       Bundle("samba-asr", config.to_dict(), {"tokenizer": tokenizer.to_base64()},
                              model.state_dict()))
    return TinyASR(path, model, tokenizer, config)


def noise(seconds: float, seed: int, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """Band-limited noise plus a tone, `(T, channels)` float32, peak about 0.5 (never silent)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = []
    for c in range(channels):
        hiss = np.convolve(rng.standard_normal(t.size), np.ones(8) / 8, mode="same")
        out.append(0.2 * hiss + 0.3 * np.sin(2 * np.pi * (220 + 110 * (seed + c)) * t))
    return np.stack(out, axis=1).astype(np.float32)


def write_audio_tree(root: Path) -> dict[str, Path]:
    """Good and bad inputs under ``root`` (names are the keys of the returned dict):

    good/top.flac, good/a/x.flac, good/b/x.flac (equal names in two folders), good/b/y.wav (44.1 kHz
    stereo), good/notes.txt (not audio: folders skip it); bad/corrupt.flac (random bytes),
    bad/empty.wav (no samples), bad/silent.flac (digital silence); image.png (only its suffix matters).
    """
    files = {
        "top": root / "good" / "top.flac",
        "ax": root / "good" / "a" / "x.flac",
        "bx": root / "good" / "b" / "x.flac",
        "by": root / "good" / "b" / "y.wav",
        "corrupt": root / "bad" / "corrupt.flac",
        "empty": root / "bad" / "empty.wav",
        "silent": root / "bad" / "silent.flac",
        "image": root / "image.png",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(files["top"], noise(0.5, 1), RATE)
    sf.write(files["ax"], noise(1.0, 2), RATE)
    sf.write(files["bx"], noise(0.7, 3), RATE)
    sf.write(files["by"], noise(0.8, 4, rate=44100, channels=2), 44100)
    (root / "good" / "notes.txt").write_text("not audio\n")
    files["corrupt"].write_bytes(np.random.default_rng(5).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    sf.write(files["empty"], np.zeros((0, 1), np.float32), RATE)
    sf.write(files["silent"], np.zeros((RATE // 2, 1), np.float32), RATE)
    files["image"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    return files
