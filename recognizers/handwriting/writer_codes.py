"""Writer codes: adaptation layers fed with a per-writer code vector (writer-htr.md §8, §11).

Origin: speaker codes for ASR (Abdel-Hamid & Jiang, "Fast speaker adaptation of hybrid NN/HMM model for
speech recognition based on discriminative learning of speaker code", ICASSP 2013), applied to HTR by
van der Werff, Dhali & Schomaker (arXiv 2307.15071; thesis code ``master-thesis/thesis/writer_code``,
cross-checked, not copied). A frozen base model gains small layers that read a code c of one writer:

* **hook A** (:class:`FeatureMLP`), on the backbone's feature map F `(B, C, h, w)`: channels-last,
  three linear layers with the code concatenated to the input of each,
  ``[F; c] → Linear(C + c, H) → ReLU → [·; c] → Linear(H + c, H) → ReLU → [·; c] → Linear(H + c, C)``,
  and a residual ``F + out`` (C = 512, H = 1000 at paper size);
* **hook B** (:class:`ConditionalBatchNorm2d`, the default), on every ``BatchNorm2d`` of the backbone:
  ``BN_noaffine(x) · (γ0 + Δγ(c)) + (β0 + Δβ(c))`` with ``[Δγ, Δβ] = Linear(h → 2C)(ReLU(Linear(c → h)))``
  (:class:`BNModulator`, h = 128), `(B, C)` per layer, broadcast over (H, W). γ0, β0 and the running
  statistics are the pretrained ones, frozen; the layer always normalises with the running statistics.

The last layer of every adapter is zero-initialised, so an untrained adapter reproduces the base model
exactly (hook A: out = 0; hook B: Δγ = Δβ = 0), whatever the code.

Codes are learned embeddings (64 dimensions, N(0, 1)) of the training writers, or Hinge vectors
(``data.hinge``, 465 dimensions for 30 bins). A new writer gets a fresh N(0, 1) code optimised on its
support set (:mod:`.writer_code_model`), or its support set's normalised Hinge vector; :class:`WriterCode`
is the small serialisable result.

Legend: B images, C channels, h×w feature cells, c code size, H hidden width.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ADAPT_OPTIMIZERS",
    "CODE_METHODS",
    "INJECTIONS",
    "SOURCES",
    "BNModulator",
    "CodeAdaptation",
    "ConditionalBatchNorm2d",
    "FeatureMLP",
    "WriterCode",
    "WriterCodeConfig",
    "condition_batchnorms",
]

SOURCES = ("learned", "hinge")
INJECTIONS = ("cond_bn", "feature_mlp")  # hook B (default), hook A
ADAPT_OPTIMIZERS = ("sgd", "adam")
CODE_METHODS = ("learned", "hinge", "random", "zero")  # how a WriterCode was made


@dataclass(frozen=True)
class WriterCodeConfig:
    """The adapter and its code source (§8.1, §8.3, §11)."""

    source: str = "learned"  # "learned" (embedding per training writer) | "hinge" (data.hinge vectors)
    injection: str = "cond_bn"  # "cond_bn" (hook B, the design's default) | "feature_mlp" (hook A)
    code_size: int = 64  # c: 64 for learned codes; the Hinge size bins·(bins+1)/2 (465) for Hinge codes
    mlp_hidden: int = 1000  # H of hook A's feature MLP
    bn_hidden: int = 128  # h of hook B's Δγ/Δβ MLP: §11's 128 (Hinge runs; the learned-code model had 1000)
    # The thesis also unfreezes FPHTR's 1×1 projection with hook A (§8.3). Off by default: §11 and test 18
    # keep the whole base frozen, and a writer profile then never carries base weights (deliberate).
    train_projection: bool = False
    hinge_bins: int = 30  # data.hinge.HingeConfig of Hinge codes (code_size must be its size)
    hinge_leg_length: int = 7

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"WriterCodeConfig.source must be one of {SOURCES}, got {self.source!r}")
        if self.injection not in INJECTIONS:
            raise ValueError(f"WriterCodeConfig.injection must be one of {INJECTIONS}, "
                             f"got {self.injection!r}")
        for name in ("code_size", "mlp_hidden", "bn_hidden", "hinge_bins", "hinge_leg_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"WriterCodeConfig.{name} must be >= 1, got {getattr(self, name)}")
        hinge_size = self.hinge_bins * (self.hinge_bins + 1) // 2
        if self.source == "hinge" and self.code_size != hinge_size:
            raise ValueError(f"Hinge codes with {self.hinge_bins} bins have {hinge_size} dimensions, "
                             f"but code_size is {self.code_size}")

    @classmethod
    def for_source(cls, source: str, **overrides: Any) -> WriterCodeConfig:
        """The defaults of a source: code size 64 (learned) or the Hinge size, 465 (hinge)."""
        if source == "hinge" and "code_size" not in overrides:
            bins = overrides.get("hinge_bins", cls.hinge_bins)
            overrides["code_size"] = bins * (bins + 1) // 2
        return cls(source=source, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WriterCodeConfig:
        return cls(**data)


@dataclass(frozen=True)
class CodeAdaptation:
    """How a new writer's learned code is fitted to its support set (§8.1, §11)."""

    steps: int = 1  # optimiser steps (0: the N(0, 1) draw as is, the random-code control)
    lr: float = 1e-4
    optimizer: str = "sgd"  # "sgd" (thesis default) | "adam"

    def __post_init__(self) -> None:
        if self.steps < 0 or not self.lr > 0:
            raise ValueError(f"CodeAdaptation: steps must be >= 0 and lr > 0, got {self}")
        if self.optimizer not in ADAPT_OPTIMIZERS:
            raise ValueError(f"CodeAdaptation.optimizer must be one of {ADAPT_OPTIMIZERS}, "
                             f"got {self.optimizer!r}")


def _zero_last(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FeatureMLP(nn.Module):
    """Hook A: the residual feature-map MLP with the code at every layer's input.

    Args:
        channels: C of the feature map (512 at paper size).
        code_size: c.
        hidden: H (1000).
    """

    def __init__(self, channels: int, code_size: int, hidden: int = 1000) -> None:
        super().__init__()
        self.code_size = code_size
        self.layers = nn.ModuleList([nn.Linear(channels + code_size, hidden),
                                     nn.Linear(hidden + code_size, hidden),
                                     _zero_last(nn.Linear(hidden + code_size, channels))])

    def forward(self, feat: Tensor, code: Tensor) -> Tensor:
        """Args: feat `(B, C, h, w)`; code `(B, c)` or `(1, c)` (one writer for the batch).

        Returns:
            `(B, C, h, w)`: ``feat + MLP([feat; code])``, channels-last inside.
        """
        if code.dim() != 2 or code.shape[1] != self.code_size:
            raise ValueError(f"expected a (B, {self.code_size}) code, got {tuple(code.shape)}")
        x = feat.permute(0, 2, 3, 1)  # (B, h, w, C)
        c = code.to(x.dtype)[:, None, None, :].expand(x.shape[0], x.shape[1], x.shape[2], -1)  # (B, h, w, c)
        for k, layer in enumerate(self.layers):
            x = layer(torch.cat([x, c], dim=-1))  # (B, h, w, H) then (B, h, w, C)
            if k < len(self.layers) - 1:
                x = F.relu(x)
        return feat + x.permute(0, 3, 1, 2)  # (B, C, h, w)


class BNModulator(nn.Module):
    """Hook B's code → (Δγ, Δβ) MLP for one BatchNorm layer of C channels.

    Args:
        code_size: c.
        channels: C of the normalised layer.
        hidden: h (128).
    """

    def __init__(self, code_size: int, channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.code_size = code_size
        self.hidden = nn.Linear(code_size, hidden)
        self.out = _zero_last(nn.Linear(hidden, 2 * channels))

    def forward(self, code: Tensor) -> tuple[Tensor, Tensor]:
        """`(B, c)` codes → Δγ `(B, C)`, Δβ `(B, C)`."""
        if code.dim() != 2 or code.shape[1] != self.code_size:
            raise ValueError(f"expected a (B, {self.code_size}) code, got {tuple(code.shape)}")
        delta = self.out(F.relu(self.hidden(code)))  # (B, 2C)
        gamma, beta = delta.chunk(2, dim=1)
        return gamma, beta


class ConditionalBatchNorm2d(nn.Module):
    """A frozen BatchNorm2d whose affine parameters a writer code shifts (hook B).

    It takes over the *same* parameter and buffer tensors as the ``BatchNorm2d`` it replaces, under
    the same names (``weight`` = γ0, ``bias`` = β0, ``running_mean``, ``running_var``,
    ``num_batches_tracked``), so the base model's ``state_dict`` keys and values do not change. It
    always normalises with the running statistics and never updates them (the base is frozen, BN
    statistics included, §8.1).

    The per-writer shift is set from outside for the duration of one forward pass
    (``WriterCodeModel.conditioned``); ``modulation`` None is the base BatchNorm exactly.

    Args:
        bn: the pretrained layer (affine, with running statistics).
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("conditional BatchNorm needs an affine BatchNorm2d with running statistics")
        self.num_features, self.eps = bn.num_features, bn.eps
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name))
        self.modulation: tuple[Tensor, Tensor] | None = None  # (Δγ, Δβ), each (B, C) or (1, C)

    def forward(self, x: Tensor) -> Tensor:
        """`(B, C, H, W)` → `(B, C, H, W)`."""
        x_hat = F.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)
        if self.modulation is None:
            return x_hat * self.weight[:, None, None] + self.bias[:, None, None]
        d_gamma, d_beta = self.modulation
        gamma = self.weight + d_gamma  # (B, C)
        beta = self.bias + d_beta  # (B, C)
        return x_hat * gamma[:, :, None, None] + beta[:, :, None, None]  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, frozen running statistics"


def condition_batchnorms(module: nn.Module) -> list[tuple[str, ConditionalBatchNorm2d]]:
    """Replace every ``BatchNorm2d`` under ``module``, in place, by a :class:`ConditionalBatchNorm2d`.

    Args:
        module: e.g. ``HTRModel.backbone``.

    Returns:
        ``(qualified name, layer)`` in ``named_modules`` order (the layers already conditioned included,
        so calling it twice is harmless).
    """
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.BatchNorm2d):
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, ConditionalBatchNorm2d(child))
    return [(n, m) for n, m in module.named_modules() if isinstance(m, ConditionalBatchNorm2d)]


@dataclass(frozen=True)
class WriterCode:
    """A new writer's code: the small, serialisable result of adaptation (the caller wraps it in the
    project's writer profile).

    Attributes:
        code: the c values.
        method: "learned" (N(0, 1) then optimised on the support set), "hinge" (normalised Hinge vector
            of the support images), "random" (the N(0, 1) draw, no optimisation) or "zero".
        metadata: JSON-able facts (injection, code size, steps, lr, optimiser, support size, seed ...).
    """

    code: tuple[float, ...]
    method: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in CODE_METHODS:
            raise ValueError(f"WriterCode.method must be one of {CODE_METHODS}, got {self.method!r}")
        if not self.code:
            raise ValueError("WriterCode.code is empty")

    @classmethod
    def from_tensor(cls, code: Tensor, method: str, **metadata: Any) -> WriterCode:
        """From a `(c,)` tensor."""
        return cls(tuple(float(v) for v in code.detach().flatten().cpu().tolist()), method, dict(metadata))

    def tensor(self, device: torch.device | str | None = None) -> Tensor:
        """`(c,)` float32."""
        return torch.tensor(self.code, dtype=torch.float32, device=device)

    def to_dict(self) -> dict[str, Any]:
        return {"code": list(self.code), "method": self.method, "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WriterCode:
        return cls(tuple(float(v) for v in data["code"]), data["method"], dict(data.get("metadata", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> WriterCode:
        return cls.from_dict(json.loads(text))
