"""Configuration of Samba-ASR (samba-asr.md §3, §9), as frozen dataclasses.

Derived sizes are properties; nothing mutates a config after construction, and ``asdict(config)``
travels inside exported weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PRESETS", "MambaConfig", "SambaASRConfig", "preset"]


@dataclass(frozen=True)
class MambaConfig:
    """One Mamba-1 mixer (the defaults are those of the Mamba reference implementation)."""

    d_model: int  # width of the residual stream
    d_state: int = 16  # N in the paper: state size per channel
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 2  # D = expand · d_model channels inside the block
    dt_rank: int = 0  # R: rank of the Δ projection; 0 means ceil(d_model / 16)
    dt_min: float = 1e-3  # range of the initial step sizes Δ (log-uniform)
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # initial Δ never below this
    dt_scale: float = 1.0  # dt_proj.weight ~ U(±dt_scale / √R)
    conv_bias: bool = True
    bias: bool = False  # biases of in_proj and out_proj

    def __post_init__(self) -> None:
        for name in ("d_model", "d_state", "d_conv", "expand"):
            if getattr(self, name) < 1:
                raise ValueError(f"MambaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dt_rank < 0:
            raise ValueError(f"MambaConfig.dt_rank must be >= 0 (0 = auto), got {self.dt_rank}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"MambaConfig needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    @property
    def d_inner(self) -> int:
        """D, the number of SSM channels."""
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        """R, the rank of the Δ projection."""
        return self.dt_rank or math.ceil(self.d_model / 16)


@dataclass(frozen=True)
class SambaASRConfig:
    """The whole speech recognizer: conv front end, BiMamba encoder, CTC head, CrossMamba decoder.

    Token ids 0/1/2 are fixed by ``data.tokenizer``: 0 is the CTC blank and the padding id, 1 starts
    and 2 ends a sentence.
    """

    vocab_size: int  # V, including the special ids
    mixer: MambaConfig = field(default_factory=lambda: MambaConfig(d_model=144))  # every Mamba mixer
    encoder_layers: int = 6  # BiMamba blocks
    decoder_layers: int = 2  # UniMamba → CrossMamba → FFN layers
    ffn_mult: int = 4  # FFN hidden width = ffn_mult · d_model after each mixer; 0 = no FFN
    n_mels: int = 80  # input features per frame (data.audio.N_MELS)
    subsample_channels: int = 64  # channels of the two stride-2 Conv2d layers (4x in time)
    dropout: float = 0.1  # on residual branches and FFN hidden units
    ctc: bool = True  # CTC head on the encoder (joint CTC/attention training and decoding)
    blank_id: int = 0
    sos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        if self.vocab_size <= max(self.blank_id, self.sos_id, self.eos_id):
            raise ValueError(f"SambaASRConfig.vocab_size {self.vocab_size} leaves no room for the special "
                             "ids")
        for name in ("encoder_layers", "decoder_layers", "n_mels", "subsample_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"SambaASRConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.ffn_mult < 0 or not 0 <= self.dropout < 1:
            raise ValueError("SambaASRConfig: ffn_mult must be >= 0 and dropout in [0, 1)")

    @property
    def d_model(self) -> int:
        return self.mixer.d_model

    @property
    def subsampling(self) -> int:
        """Frames of features per encoder frame (two stride-2 convolutions)."""
        return 4

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (stored in checkpoints and safetensors metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SambaASRConfig:
        """Inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        data = dict(data)
        mixer = MambaConfig(**data.pop("mixer"))
        return cls(mixer=mixer, **data)


# Sizes of samba-asr.md §9: "tiny" for tests (≈ 0.1 M parameters), "cpu" for the bundled model (3.3 M
# with V = 256), "large" for LibriSpeech-960 (91 M with V = 5000: d 512, 12 BiMamba blocks with FFN 2048,
# 6 decoder layers; ConMamba-L's 123 M also has convolution modules and macaron FFNs, which this
# all-Mamba design leaves out).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=32, encoder_layers=2, decoder_layers=1, ffn_mult=2, subsample_channels=8,
                 dropout=0.0),
    "cpu": dict(d_model=144, encoder_layers=6, decoder_layers=2, ffn_mult=4, subsample_channels=32),
    "large": dict(d_model=512, encoder_layers=12, decoder_layers=6, ffn_mult=4, subsample_channels=256),
}


def preset(name: str, vocab_size: int, **overrides: Any) -> SambaASRConfig:
    """A named size of samba-asr.md §9 with ``vocab_size``; ``overrides`` replace its fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown Samba-ASR preset {name!r}; choose from {sorted(PRESETS)}")
    values = {**PRESETS[name], **overrides}
    d_model = values.pop("d_model")
    d_state = values.pop("d_state", 16)
    mixer = MambaConfig(d_model=d_model, d_state=d_state)
    return SambaASRConfig(vocab_size=vocab_size, mixer=mixer, **values)
