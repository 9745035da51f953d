"""Configuration of PosFormer (posformer.md §3, §9), as frozen dataclasses.

Defaults reproduce the reference configuration (the released checkpoint); derived sizes are properties;
nothing mutates a config after construction, and ``to_dict()`` travels inside exported weights.

Vocabulary-dependent values are explicit fields, never hard-coded ids (posformer.md §1): ``vocab_size``,
the special ids, and ``iac_ids``, the ids of the IAC set Ω, which :func:`resolve_ids` looks up by token
string in whatever vocabulary the caller has.

Deviations from the reference, all deliberate:

* the DenseNet bottleneck always uses the reference order (conv → BN → ReLU); the textbook
  pre-activation order is not offered, because the parameter counts of §3.5 assume the reference one;
* the loss weights (§5) are not model architecture and live in ``loss.LossWeights``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "IAC_SYMBOLS",
    "IAC_SYMBOLS_OUTPUT_ALIGNED",
    "PRESETS",
    "ArmConfig",
    "DecoderConfig",
    "EncoderConfig",
    "PosFormerConfig",
    "PositionConfig",
    "preset",
    "resolve_ids",
]

IAC_SYMBOLS = ("{", "^", "_")  # Ω of the reference implementation (input-aligned), §3.3 step 4
IAC_SYMBOLS_OUTPUT_ALIGNED = ("^", "_", "{", "}")  # Ω of the §3.3 "output-aligned" ablation
_ALIGNMENTS = ("input", "output")


def resolve_ids(lookup: Mapping[str, int] | Callable[[str], int], symbols: Sequence[str] = IAC_SYMBOLS,
                ) -> tuple[int, ...]:
    """Token ids of ``symbols`` in a vocabulary (a ``str → id`` mapping or function), e.g. for ``iac_ids``.

    Raises:
        KeyError: a symbol is not in the vocabulary.
    """
    get = lookup.__getitem__ if isinstance(lookup, Mapping) else lookup
    return tuple(int(get(s)) for s in symbols)


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"{type(obj).__name__}.{name} must be >= 1, got {getattr(obj, name)}")


def _check_dropout(obj: Any, name: str = "dropout") -> None:
    if not 0 <= getattr(obj, name) < 1:
        raise ValueError(f"{type(obj).__name__}.{name} must be in [0, 1), got {getattr(obj, name)}")


@dataclass(frozen=True)
class EncoderConfig:
    """DenseNet-B (§3.1): three dense blocks of bottlenecks with two compressing transitions, /16 overall."""

    growth_rate: int = 24  # g: channels each bottleneck adds
    num_layers: int = 16  # bottlenecks in *each* of the 3 dense blocks
    reduction: float = 0.5  # channel compression of the transitions (θ of DenseNet-BC)
    bottleneck_width: int = 4  # the bottleneck's 1×1 conv has bottleneck_width · g channels (4g = 96)
    dropout: float = 0.2  # after each ReLU in bottlenecks and transitions ("use_dropout")

    def __post_init__(self) -> None:
        _check_positive(self, "growth_rate", "num_layers", "bottleneck_width")
        if not 0 < self.reduction <= 1:
            raise ValueError(f"EncoderConfig.reduction must be in (0, 1], got {self.reduction}")
        _check_dropout(self)

    @property
    def stem_channels(self) -> int:
        """Channels of the 7×7 stem conv (2g = 48)."""
        return 2 * self.growth_rate

    @property
    def block_channels(self) -> tuple[tuple[int, int], ...]:
        """(input, output) channels of the three dense blocks: (48, 432), (216, 600), (300, 684)."""
        blocks, c = [], self.stem_channels
        for i in range(3):
            out = c + self.num_layers * self.growth_rate
            blocks.append((c, out))
            c = int(out * self.reduction) if i < 2 else out
        return tuple(blocks)

    @property
    def out_channels(self) -> int:
        """Channels of the DenseNet output (684)."""
        return self.block_channels[-1][1]


@dataclass(frozen=True)
class ArmConfig:
    """CoMER's Attention Refinement Module with PosFormer's Implicit Attention Correction (§3.3).

    ``enabled=False`` gives BTTR's plain decoder; ``iac_ids=()`` (in :class:`PosFormerConfig`) gives CoMER.
    """

    enabled: bool = True  # refine the cross-attention of decoder layers 2.. (one shared module)
    coverage_channels: int = 32  # dc: hidden channels of the 5×5 coverage conv
    kernel_size: int = 5  # of the coverage conv (padding keeps h×w)
    cross_coverage: bool = True  # coverage input includes the previous layer's refined attention
    self_coverage: bool = True  # coverage input includes this layer's unrefined attention
    iac_alignment: str = "input"  # "input": m[t] keys on tgt[t] (reference); "output": on out[t] = tgt[t+1]

    def __post_init__(self) -> None:
        _check_positive(self, "coverage_channels", "kernel_size")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"ArmConfig.kernel_size must be odd, got {self.kernel_size}")
        if self.enabled and not (self.cross_coverage or self.self_coverage):
            raise ValueError("ArmConfig needs cross_coverage or self_coverage when enabled")
        if self.iac_alignment not in _ALIGNMENTS:
            raise ValueError(f"ArmConfig.iac_alignment must be one of {_ALIGNMENTS}, "
                             f"got {self.iac_alignment!r}")


@dataclass(frozen=True)
class DecoderConfig:
    """One post-norm transformer decoder stack (§3.2); the position branch uses an identical one (§3.4)."""

    d_model: int = 256  # d, shared with the encoder's projection
    num_heads: int = 8  # H
    num_layers: int = 3
    dim_feedforward: int = 1024
    dropout: float = 0.3  # on residual branches, the FFN hidden units and attention probabilities
    max_len: int = 500  # rows of the 1-D sinusoidal table: the longest decodable sequence + 1
    arm: ArmConfig = field(default_factory=ArmConfig)

    def __post_init__(self) -> None:
        _check_positive(self, "d_model", "num_heads", "num_layers", "dim_feedforward", "max_len")
        if self.d_model % 4 or self.d_model % self.num_heads:
            raise ValueError(f"DecoderConfig.d_model {self.d_model} must be a multiple of 4 (2-D encoding) "
                             f"and of num_heads {self.num_heads}")
        _check_dropout(self)

    @property
    def coverage_inputs(self) -> int:
        """Channels of the ARM's coverage input: H per enabled coverage kind (2H = 16)."""
        return self.num_heads * (int(self.arm.cross_coverage) + int(self.arm.self_coverage))


@dataclass(frozen=True)
class PositionConfig:
    """The training-only position branch (§3.4): a second decoder stack with its own weights."""

    enabled: bool = True  # False builds the inference model (encoder + word decoder) only
    path_dim: int = 5  # length of the position-path input vector (§4.2)
    num_levels: int = 5  # classes of the nesting-level head (0..4)
    num_relations: int = 6  # classes of the relative-position head: pad, sos, eos, M, L, R
    head_hidden: int = 128  # Linear(d, 128) → ReLU → Linear(128, classes)

    def __post_init__(self) -> None:
        _check_positive(self, "path_dim", "num_levels", "num_relations", "head_hidden")


@dataclass(frozen=True)
class PosFormerConfig:
    """The whole PosFormer network: DenseNet-B encoder, word decoder, position branch.

    Token ids: ``pad_id``/``sos_id``/``eos_id`` are 0/1/2 in the CROHME vocabulary (§2.3). ``iac_ids`` is Ω,
    the decoder-input tokens whose attention rows IAC keeps out of the coverage: ``resolve_ids(vocab)``
    gives the reference's ``{ ^ _``, and ``()`` gives CoMER. It has no default because ids depend on the
    vocabulary (§1: never hard-coded).
    """

    iac_ids: tuple[int, ...]  # Ω as token ids; required, so that no config silently drops IAC
    vocab_size: int = 113  # V, the 110 dictionary tokens + pad, sos, eos
    pad_id: int = 0
    sos_id: int = 1
    eos_id: int = 2
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    position: PositionConfig = field(default_factory=PositionConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "iac_ids", tuple(int(i) for i in self.iac_ids))  # JSON gives lists
        specials = (self.pad_id, self.sos_id, self.eos_id)
        if len(set(specials)) < 3 or min(specials) < 0 or self.vocab_size <= max(specials):
            raise ValueError(f"PosFormerConfig: bad special ids {specials} for vocab_size {self.vocab_size}")
        if any(not 0 <= i < self.vocab_size for i in self.iac_ids):
            raise ValueError(f"PosFormerConfig.iac_ids {self.iac_ids} out of range for {self.vocab_size}")

    @property
    def d_model(self) -> int:
        return self.decoder.d_model

    @property
    def downsampling(self) -> int:
        """Pixels per feature cell along each axis (stem conv, max pool, two transitions)."""
        return 16

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (stored in checkpoints and safetensors metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PosFormerConfig:
        """Inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        data = dict(data)
        decoder = dict(data.pop("decoder", {}))
        arm = ArmConfig(**decoder.pop("arm", {}))
        encoder = EncoderConfig(**data.pop("encoder", {}))
        position = PositionConfig(**data.pop("position", {}))
        return cls(encoder=encoder, decoder=DecoderConfig(arm=arm, **decoder), position=position, **data)


# "paper" is the reference configuration (§3.5: 6,389,041 inference parameters, 9,632,236 in training);
# "tiny" keeps every code path (3 decoder layers, so two of them share the ARM) at a size for CPU tests.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": dict(
        encoder=EncoderConfig(growth_rate=4, num_layers=2, bottleneck_width=2, dropout=0.0),
        decoder=DecoderConfig(d_model=16, num_heads=2, num_layers=3, dim_feedforward=32, dropout=0.0,
                              max_len=64, arm=ArmConfig(coverage_channels=4)),
        position=PositionConfig(head_hidden=8),
    ),
}


def preset(name: str, *, iac_ids: Sequence[int], vocab_size: int = 113, **overrides: Any) -> PosFormerConfig:
    """A named size with the vocabulary's ``vocab_size`` and ``iac_ids``; ``overrides`` replace fields.

    Example: ``preset("paper", iac_ids=resolve_ids(vocab.token_to_id), vocab_size=len(vocab))`` with
    ``vocab = data.vocab.crohme_vocab()``.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown PosFormer preset {name!r}; choose from {sorted(PRESETS)}")
    cfg = PosFormerConfig(vocab_size=vocab_size, iac_ids=tuple(iac_ids), **PRESETS[name])
    return replace(cfg, **overrides)
