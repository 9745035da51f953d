"""Audio loading, features and augmentation (samba-asr.md §13.7: A2, A3; platform.md §4, §10)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from data.audio import (
    HOP_LENGTH,
    N_MELS,
    SAMPLE_RATE,
    AudioError,
    GlobalCMVN,
    SpecAugment,
    load_audio,
    log_mel,
    num_frames,
)


def _tone(rate: int, seconds: float, channels: int = 2) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([left, 0.25 * np.sin(2 * np.pi * 660 * t)][:channels], axis=1).astype(np.float32)


@pytest.mark.parametrize(("fmt", "subtype", "rate"), [("wav", "PCM_16", 22050), ("flac", None, 44100),
                                                      ("ogg", "VORBIS", 16000), ("mp3", None, 48000)])
def test_load_audio_formats_to_16k_mono(tmp_path, fmt, subtype, rate):
    path = tmp_path / f"tone.{fmt}"
    samples = _tone(rate, 1.5)
    sf.write(path, samples, rate, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == torch.float32
    assert wave.dim() == 1
    assert abs(wave.shape[0] - 1.5 * SAMPLE_RATE) <= 0.02 * SAMPLE_RATE  # mp3 pads a little
    expected = torchaudio.functional.resample(torch.from_numpy(samples.mean(1)), rate, SAMPLE_RATE)
    n = min(len(expected), len(wave)) - 2000
    lag = int(torch.argmax(torch.stack([torch.dot(wave[k : k + n], expected[:n]) for k in range(0, 1200)])))
    corr = torch.nn.functional.cosine_similarity(wave[lag : lag + n], expected[:n], dim=0)
    assert corr > 0.9, (fmt, float(corr))


def test_load_audio_from_samples_resamples():
    wave = load_audio(_tone(8000, 1.0, channels=1)[:, 0], sample_rate=8000)
    assert wave.shape == (SAMPLE_RATE,)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "cannot read audio"),  # missing file
        (lambda p: p.write_bytes(b""), "cannot read audio"),  # zero bytes
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10), "cannot read audio"),  # corrupt
        (lambda p: sf.write(p, np.zeros((0, 1), np.float32), 16000), "empty audio"),
        (lambda p: sf.write(p, np.zeros((16000, 1), np.float32), 16000), "silent"),
        (lambda p: sf.write(p, _tone(16000, 3.0), 16000), "longer than the 2 s limit"),
    ],
)
def test_bad_audio_gets_a_clear_error_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=message) as info:
        load_audio(path, max_seconds=2)
    assert str(path) in str(info.value)


def test_non_finite_samples_rejected():
    samples = _tone(16000, 0.5, channels=1)
    samples[10] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        load_audio(samples)


def test_log_mel_shape_and_frame_rule():
    """A2: 80 bins, 25 ms window, 10 ms hop; F = T // 160 + 1 (centred STFT)."""
    for samples in (32000, 32159, 160, 1):
        feats = log_mel(torch.randn(samples) * 0.1)
        assert feats.shape == (N_MELS, num_frames(samples)) == (N_MELS, samples // HOP_LENGTH + 1)
    assert log_mel(torch.randn(3, 16000)).shape == (3, N_MELS, 101)
    assert torch.isfinite(log_mel(torch.zeros(1600))).all()


def test_log_mel_puts_a_tone_in_the_right_bin():
    wave = torch.from_numpy(_tone(SAMPLE_RATE, 1.0, channels=1)[:, 0])
    feats = log_mel(wave)
    fb = torchaudio.functional.melscale_fbanks(201, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE)  # (201, 80)
    expected_bin = int(fb[round(440 / (SAMPLE_RATE / 400))].argmax())
    assert abs(int(feats.mean(-1).argmax()) - expected_bin) <= 1


def test_spec_augment_is_identity_in_eval_mode():
    aug = SpecAugment().eval()
    feats = torch.randn(2, N_MELS, 300)
    assert torch.equal(aug(feats), feats)


def test_spec_augment_mask_counts_and_widths():
    """A3: at most `freq_masks` bands of < freq_width bins and `time_masks` spans of at most
    time_ratio·frames, inside each utterance's valid frames."""
    torch.manual_seed(0)
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=3, time_ratio=0.05).train()
    lengths = torch.tensor([400, 250])
    for _ in range(20):
        feats = torch.rand(2, N_MELS, 400) + 1.0  # never 0 before masking
        out = aug(feats, lengths)
        for i, n in enumerate(lengths.tolist()):
            zero_bins = (out[i, :, :n] == 0).all(dim=1).sum()
            zero_frames = (out[i] == 0).all(dim=0)
            assert zero_bins <= 2 * 9
            assert zero_frames.sum() <= 3 * math.floor(0.05 * n)
            assert not zero_frames[n:].any() or n == 400
    assert (out != feats).any()


def test_global_cmvn_fit_and_round_trip():
    """A2: statistics normalise the corpus and travel in the state dict."""
    torch.manual_seed(1)
    utts = [torch.randn(N_MELS, n) * 3 + 5 for n in (50, 120, 80)]
    cmvn = GlobalCMVN.fit(utts)
    normed = torch.cat([cmvn(u) for u in utts], dim=-1)
    torch.testing.assert_close(normed.mean(-1), torch.zeros(N_MELS), atol=1e-4, rtol=0)
    torch.testing.assert_close(normed.std(-1, unbiased=False), torch.ones(N_MELS), atol=1e-4, rtol=0)
    restored = GlobalCMVN()
    restored.load_state_dict(cmvn.state_dict())
    torch.testing.assert_close(restored(utts[0]), cmvn(utts[0]))


def test_torchaudio_dsp_functions_work_beside_this_torch():
    """platform.md §4: the four torchaudio uses, since its wheel cannot declare the torch it needs."""
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80)
    assert mel(torch.randn(1, 32000)).shape == (1, 80, 201)
    assert torchaudio.functional.resample(torch.randn(441000), 44100, 16000).shape == (160000,)
    assert torchaudio.transforms.TimeMasking(10)(torch.ones(1, 80, 100)).shape == (1, 80, 100)
    assert torchaudio.transforms.FrequencyMasking(10)(torch.ones(1, 80, 100)).shape == (1, 80, 100)
    log_probs = torch.randn(1, 20, 5).log_softmax(-1)
    targets = torch.tensor([[1, 2, 3]], dtype=torch.int32)
    labels, scores = torchaudio.functional.forced_align(log_probs, targets, blank=0)
    assert labels.shape == scores.shape == (1, 20)
    assert [s.token for s in torchaudio.functional.merge_tokens(labels[0], scores[0].exp())] == [1, 2, 3]
