"""Audio for Samba-ASR: loading, log-Mel features, SpecAugment and global mean/variance normalisation.

I/O goes through soundfile (WAV, FLAC, OGG/Vorbis, OGG/Opus, MP3, AIFF, ...); the DSP (Mel filter
bank, resampling, masking) is torchaudio's (platform.md §4, §10: torchaudio I/O is never used).
Features follow samba-asr.md §8.2: 80 Mel bins, 25 ms window, 10 ms hop, natural log.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import nn

__all__ = [
    "HOP_LENGTH",
    "MAX_SECONDS",
    "N_FFT",
    "N_MELS",
    "SAMPLE_RATE",
    "AudioError",
    "GlobalCMVN",
    "SpecAugment",
    "load_audio",
    "log_mel",
    "num_frames",
]

SAMPLE_RATE = 16000  # Hz: every waveform is resampled to this
N_FFT = 400  # samples: a 25 ms analysis window at 16 kHz
HOP_LENGTH = 160  # samples: a 10 ms hop, so 100 feature frames per second
N_MELS = 80  # Mel bins per frame
MAX_SECONDS = 30 * 60  # default cap on one input: 30 minutes (recognizers window longer audio)
SILENCE = 1e-4  # peak amplitude below which an input counts as silent (about -80 dBFS)
LOG_FLOOR = 1e-10  # power floor before the log, so digital silence stays finite


class AudioError(ValueError):
    """An input that cannot be used as audio; the message names the input and the problem."""


def load_audio(source: str | Path | np.ndarray | torch.Tensor, *, sample_rate: int | None = None,
               max_seconds: float = MAX_SECONDS) -> torch.Tensor:
    """Read or convert audio to 16 kHz mono float32.

    Args:
        source: a file path, or samples `(T,)` or `(T, channels)` (array or tensor).
        sample_rate: the rate of in-memory samples (default 16 kHz); ignored for files.
        max_seconds: longest accepted duration.

    Returns:
        `(T',)` float32 waveform at 16 kHz.

    Raises:
        AudioError: unreadable, empty, silent, non-finite or longer than ``max_seconds``.
    """
    if isinstance(source, str | Path):
        name = str(source)
        try:
            samples, rate = sf.read(name, dtype="float32", always_2d=True)  # (T, channels)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioError(f"{name}: cannot read audio ({exc})") from exc
        wave = torch.from_numpy(samples)
    else:
        name, rate = "<samples>", sample_rate or SAMPLE_RATE
        wave = torch.as_tensor(source).to(torch.float32)
        if wave.dim() == 1:
            wave = wave[:, None]
        if wave.dim() != 2:
            raise AudioError(f"{name}: expected samples (T,) or (T, channels), got shape {tuple(wave.shape)}")
    return _checked_mono_16k(wave, rate, name, max_seconds)


def _checked_mono_16k(wave: torch.Tensor, rate: int, name: str, max_seconds: float) -> torch.Tensor:
    """`(T, channels)` at ``rate`` → `(T',)` at 16 kHz, with the checks of ``load_audio``."""
    frames = wave.shape[0]
    if frames == 0 or wave.shape[1] == 0:
        raise AudioError(f"{name}: empty audio (no samples)")
    if frames / rate > max_seconds:
        raise AudioError(f"{name}: {frames / rate:.0f} s of audio is longer than the "
                         f"{max_seconds:.0f} s limit")
    if not torch.isfinite(wave).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    mono = wave.mean(dim=1)  # (T,)
    if mono.abs().max() < SILENCE:
        raise AudioError(f"{name}: audio is silent (peak below {SILENCE:g})")
    if rate != SAMPLE_RATE:
        mono = torchaudio.functional.resample(mono, rate, SAMPLE_RATE)
    return mono.contiguous()


def num_frames(num_samples: int) -> int:
    """Feature frames for a waveform: the STFT is centred, so T // HOP_LENGTH + 1."""
    return num_samples // HOP_LENGTH + 1


@functools.cache
def _mel_transform(device: torch.device) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP_LENGTH,
                                                n_mels=N_MELS).to(device)


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """Log-Mel features.

    Args:
        wave: `(T,)` or `(B, T)` float32 waveform at 16 kHz.

    Returns:
        `(80, F)` or `(B, 80, F)` with F = ``num_frames(T)``: log(max(power, 1e-10)). Inputs shorter
        than half a window are zero-padded first, so any length works.
    """
    length = wave.shape[-1]
    short = N_FFT // 2 + 1 - length  # the centred STFT reflects N_FFT // 2 samples at each edge
    if short > 0:
        wave = torch.nn.functional.pad(wave, (0, short))
    mel = _mel_transform(wave.device)(wave.float())[..., : num_frames(length)]
    return torch.log(mel.clamp(min=LOG_FLOOR))


class SpecAugment(nn.Module):
    """Frequency and time masks (Park et al. 2019; samba-asr.md §8.3), active only in training mode.

    Each call draws ``freq_masks`` bands of at most ``freq_width`` bins and ``time_masks`` spans of at
    most ``time_ratio`` of the frames (at least 1 frame), independently per utterance, and sets them
    to 0: after ``GlobalCMVN`` that is the corpus mean.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 2,
                 time_ratio: float = 0.05) -> None:
        super().__init__()
        if min(freq_masks, freq_width, time_masks) < 0 or not 0 <= time_ratio <= 1:
            raise ValueError("SpecAugment: mask counts and widths must be >= 0, time_ratio in [0, 1]")
        self.freq_masks, self.time_masks, self.time_ratio = freq_masks, time_masks, time_ratio
        self.freq = torchaudio.transforms.FrequencyMasking(freq_width, iid_masks=True)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Args: feats `(B, 80, F)`; lengths `(B,)` valid frames (masks stay inside them).
        Returns: `(B, 80, F)` (the input itself in eval mode)."""
        if not self.training:
            return feats
        out = feats.clone()
        for _ in range(self.freq_masks):
            out = self.freq(out)
        frames = torch.full((out.shape[0],), out.shape[-1]) if lengths is None else lengths.cpu()
        for i, n in enumerate(frames.tolist()):
            width = max(1, math.floor(self.time_ratio * n))
            for _ in range(self.time_masks):
                w = int(torch.randint(0, width + 1, ()))
                start = int(torch.randint(0, max(1, n - w + 1), ()))
                out[i, :, start : start + w] = 0.0
        return out


class GlobalCMVN(nn.Module):
    """Global mean/variance normalisation per Mel bin; the statistics are buffers, so they travel
    with the model's weights."""

    def __init__(self, n_mels: int = N_MELS) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("istd", torch.ones(n_mels))

    @classmethod
    def fit(cls, features: list[torch.Tensor], floor: float = 1e-5) -> GlobalCMVN:
        """Statistics over utterances `(80, F_i)`, accumulated in float64."""
        if not features:
            raise ValueError("GlobalCMVN.fit needs at least one utterance")
        total = sum(f.shape[-1] for f in features)
        s1 = sum(f.double().sum(-1) for f in features)
        s2 = sum(f.double().square().sum(-1) for f in features)
        mean = s1 / total
        var = (s2 / total - mean.square()).clamp(min=floor**2)
        cmvn = cls(features[0].shape[0])
        cmvn.mean.copy_(mean.float())
        cmvn.istd.copy_(var.rsqrt().float())
        return cmvn

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Args: feats `(..., 80, F)`. Returns: normalised features, same shape."""
        return (feats - self.mean[:, None]) * self.istd[:, None]
