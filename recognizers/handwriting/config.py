"""Configuration of the handwriting base models FPHTR and SAR (writer-htr.md §4, §11), as frozen dataclasses.

Defaults are the thesis's sizes ("paper"); derived sizes are properties; nothing mutates a config after
construction, and ``to_dict()`` travels inside exported weights, so loading needs nothing else.

Model names follow the thesis: "FPHTR-18" is ``decoder="fphtr"`` on ``backbone.arch="resnet18"``,
"SAR-31" is ``decoder="sar"`` on ``"resnet31"``.

Deviation: ``BackboneConfig.base_channels`` scales every ResNet width (64 is the standard network).
The thesis has no such knob; it exists for the tiny test models and the CPU preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["ARCHS", "DECODERS", "PRESETS", "BackboneConfig", "FPHTRConfig", "HTRConfig", "SARConfig",
           "preset"]

ARCHS = ("resnet18", "resnet34", "resnet31")
DECODERS = ("fphtr", "sar")


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"{type(obj).__name__}.{name} must be >= 1, got {getattr(obj, name)}")


def _check_dropout(obj: Any, *names: str) -> None:
    for name in names:
        if not 0 <= getattr(obj, name) < 1:
            raise ValueError(f"{type(obj).__name__}.{name} must be in [0, 1), got {getattr(obj, name)}")


@dataclass(frozen=True)
class BackboneConfig:
    """The ResNet under either decoder (§4.2, §4.4): one grey input channel, no pooling head."""

    arch: str = "resnet18"  # resnet18 | resnet34 (torchvision layout, /32) | resnet31 (MMOCR's, /8 × /4)
    base_channels: int = 64  # width of the first stage; every other width scales with it (64: standard)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"BackboneConfig.arch must be one of {ARCHS}, got {self.arch!r}")
        _check_positive(self, "base_channels")

    @property
    def channels(self) -> tuple[int, ...]:
        """Stage widths: ResNet18/34 (64, 128, 256, 512); ResNet31 (64, 128, 256, 256, 512, 512, 512)."""
        c = self.base_channels
        if self.arch == "resnet31":
            return (c, 2 * c, 4 * c, 4 * c, 8 * c, 8 * c, 8 * c)
        return (c, 2 * c, 4 * c, 8 * c)

    @property
    def out_channels(self) -> int:
        """C of the feature map, 512 at standard width (writer-code hook A acts on it)."""
        return self.channels[-1]

    @property
    def stride(self) -> tuple[int, int]:
        """Pixels per feature cell (height, width): a feature map is (ceil(H/s_h), ceil(W/s_w))."""
        return (8, 4) if self.arch == "resnet31" else (32, 32)


@dataclass(frozen=True)
class FPHTRConfig:
    """FPHTR's decoder side (§4.2): 1×1 projection, 2-D sinusoidal memory, post-norm transformer decoder."""

    d_model: int = 260  # d; a multiple of 4 (2-D encoding: d/2 channels for y, d/2 for x) and of num_heads
    num_heads: int = 4
    num_layers: int = 6
    dim_feedforward: int = 1024  # GELU in between
    encoder_dropout: float = 0.1  # on the position-encoded memory
    dropout: float = 0.1  # decoder: embedded inputs, residual branches, FFN hidden units, attention

    def __post_init__(self) -> None:
        _check_positive(self, "d_model", "num_heads", "num_layers", "dim_feedforward")
        if self.d_model % 4 or self.d_model % self.num_heads:
            raise ValueError(f"FPHTRConfig.d_model {self.d_model} must be a multiple of 4 (2-D encoding) "
                             f"and of num_heads {self.num_heads}")
        _check_dropout(self, "encoder_dropout", "dropout")


@dataclass(frozen=True)
class SARConfig:
    """SAR's decoder side (§4.3, MMOCR's ``SAREncoder`` + ``ParallelSARDecoder``)."""

    hidden: int = 512  # LSTM width of encoder and decoder, embedding and holistic feature size
    num_layers: int = 2  # of each LSTM
    d_k: int = 512  # width of the 2-D attention's keys and queries
    encoder_dropout: float = 0.1  # between the holistic encoder LSTM's layers
    decoder_dropout: float = 0.0  # between the decoder LSTM's layers
    pred_dropout: float = 0.1  # on the classifier output (as MMOCR); inactive in eval mode
    pred_concat: bool = True  # classifier input [y, glimpse, h_hol] (True) or the glimpse alone

    def __post_init__(self) -> None:
        _check_positive(self, "hidden", "num_layers", "d_k")
        _check_dropout(self, "encoder_dropout", "decoder_dropout", "pred_dropout")


@dataclass(frozen=True)
class HTRConfig:
    """A whole base model: backbone, the chosen decoder, vocabulary size and special ids.

    Both decoder configs are always present (so ``from_dict`` needs no branching); only the one named
    by ``decoder`` is built.
    """

    vocab_size: int = 81  # V: <pad>, <sos>, <eos> + the training characters (≈ 78 for IAM words)
    decoder: str = "fphtr"  # "fphtr" or "sar"
    max_seq_len: int = 55  # T at most, <eos> included: 55 for words, 90 for lines (greedy decoding cap)
    pad_id: int = 0
    sos_id: int = 1
    eos_id: int = 2
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fphtr: FPHTRConfig = field(default_factory=FPHTRConfig)
    sar: SARConfig = field(default_factory=SARConfig)

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"HTRConfig.decoder must be one of {DECODERS}, got {self.decoder!r}")
        _check_positive(self, "max_seq_len")
        specials = (self.pad_id, self.sos_id, self.eos_id)
        if len(set(specials)) < 3 or min(specials) < 0 or self.vocab_size <= max(specials):
            raise ValueError(f"HTRConfig: bad special ids {specials} for vocab_size {self.vocab_size}")

    @property
    def name(self) -> str:
        """The thesis's model name, e.g. "FPHTR-18" or "SAR-31"."""
        return f"{self.decoder.upper()}-{self.backbone.arch.removeprefix('resnet')}"

    @property
    def feature_dim(self) -> int:
        """D, the width of the classifier's input h_n: d_model (FPHTR) or 2·hidden + C (SAR, concat)."""
        if self.decoder == "fphtr":
            return self.fphtr.d_model
        glimpse = self.backbone.out_channels
        return 2 * self.sar.hidden + glimpse if self.sar.pred_concat else glimpse

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (stored in checkpoints and safetensors metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HTRConfig:
        """Inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        data = dict(data)
        backbone = BackboneConfig(**data.pop("backbone", {}))
        fphtr = FPHTRConfig(**data.pop("fphtr", {}))
        sar = SARConfig(**data.pop("sar", {}))
        return cls(backbone=backbone, fphtr=fphtr, sar=sar, **data)


# "paper": the thesis sizes (§4, §11). "cpu": narrow enough to train on the synthetic corpus (§10) on
# a CPU. "tiny": every code path (two decoder layers, two LSTM layers) at a size for unit tests.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": dict(
        base_channels=16,
        fphtr=FPHTRConfig(d_model=128, num_heads=4, num_layers=3, dim_feedforward=512),
        sar=SARConfig(hidden=128, d_k=128),
    ),
    "tiny": dict(
        base_channels=4,
        fphtr=FPHTRConfig(d_model=16, num_heads=2, num_layers=2, dim_feedforward=32),
        sar=SARConfig(hidden=16, d_k=8),
    ),
}


def preset(name: str, *, decoder: str = "fphtr", arch: str = "resnet18", vocab_size: int = 81,
           **overrides: Any) -> HTRConfig:
    """A named size for one decoder and backbone; ``overrides`` replace top-level fields.

    Example: ``preset("paper", decoder="sar", arch="resnet31", vocab_size=len(vocab))`` is SAR-31.

    Raises:
        ValueError: unknown preset, decoder or backbone.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown handwriting preset {name!r}; choose from {sorted(PRESETS)}")
    sizes = dict(PRESETS[name])
    backbone = BackboneConfig(arch=arch, base_channels=sizes.pop("base_channels", 64))
    cfg = HTRConfig(vocab_size=vocab_size, decoder=decoder, backbone=backbone, **sizes)
    return replace(cfg, **overrides)
