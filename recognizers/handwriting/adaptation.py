"""Writer adaptation inside the handwriting recognizer: which method a model file supports, how it adapts
to a writer's labelled samples, and how a :class:`~.profile.WriterProfile` changes decoding
(writer-htr.md §6–§9).

A model file says how it adapts (metadata and tensors beside the base weights, see
:func:`inference_bundle`):

* **MetaHTR** (metadata ``recognizers.metahtr``, tensors ``meta.*``: the learned log-rates log α_k and
  the instance-weight network g_γ of ``MetaHTRModule``): :class:`MetaHTRAdapter` runs the meta-trained
  inner loop (``metahtr.inner_adapt``, first order: nothing is kept for a backward) → a "metahtr" profile;
* **writer codes** (metadata ``recognizers.writer_codes`` = ``WriterCodeConfig``, tensors ``codes.*``:
  the adapter — conditional-BN modulators or the feature MLP — and, for Hinge codes, the normaliser):
  :class:`WriterCodeAdapter` fits a fresh N(0, 1) code on the support set (seeded, so adaptation is
  deterministic) or normalises the support images' Hinge PDF → a "writer-code" profile;
* **a plain base model**: :class:`FinetuneAdapter`, the MAML-style *baseline*, not MetaHTR — a few SGD
  steps θ ← θ − lr ∇θ L on the support set's mean cross-entropy with one fixed, non-learned rate, through
  the same ``inner_adapt`` (§7.1 ``finetune``, §9.1 row 3). It adapts only the tensors named by
  ``FinetuneConfig.adapt`` (default: the final classifier, "naive last-layer fine-tuning", which also
  keeps profiles small); a model file may override it with ``recognizers.adaptation``. The default rate
  1e-3 is the thesis's fixed MAML inner rate (§7.1, §11) and 10 steps "a few"; neither is tuned.

Decoding with a delta profile swaps θ' = θ + Δ in with ``torch.func.functional_call`` for the whole
search (the shared module's own weights never change); with a code profile the adapter is conditioned on
the code for the search (``WriterCodeModel.conditioned``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..checkpoint import Bundle, CheckpointError
from .metahtr import MetaHTR, MetaHTRConfig, WordBatch, adapted_names, inner_adapt
from .model import FeatureHook, HTRModel
from .profile import ProfileError, WriterProfile
from .writer_code_model import WriterCodeModel
from .writer_codes import CodeAdaptation, WriterCodeConfig

__all__ = [
    "Adapter",
    "FinetuneAdapter",
    "FinetuneConfig",
    "MetaHTRAdapter",
    "Support",
    "WriterCodeAdapter",
    "adapter_from_bundle",
    "decode_adapted",
    "inference_bundle",
]

META, CODES = "meta.", "codes."
LEGACY_CODES_MODEL = "handwriting-writer-codes"  # training/writer_codes_module.py checkpoints
_DROPPED_CODE_STATE = ("codes.weight", "hinge_table")  # the training writers' codes: not for new writers
T = TypeVar("T")


@dataclass(frozen=True)
class FinetuneConfig:
    """Plain fine-tuning of a base model without MetaHTR state (the MAML-style baseline)."""

    adapt: tuple[str, ...] = ("decoder.classifier.",)  # parameter-name prefixes; () = every parameter
    lr: float = 1e-3  # fixed rate (the thesis's vanilla-MAML inner rate)
    steps: int = 10  # SGD steps on the whole support set

    def __post_init__(self) -> None:
        if self.steps < 1 or not self.lr > 0:
            raise ValueError(f"FinetuneConfig: steps must be >= 1 and lr > 0, got {self}")
        object.__setattr__(self, "adapt", tuple(self.adapt))


@dataclass(frozen=True)
class Support:
    """A writer's labelled samples, ready to adapt on.

    Attributes:
        batch: the padded images and teacher-forcing tensors, on the model's device.
        grey: per sample the `(H, W)` uint8 image, dark ink on light paper, before scaling (Hinge codes
            only; None where unknown).
    """

    batch: WordBatch
    grey: Sequence[np.ndarray | None]


def _deltas(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> dict[str, Tensor]:
    deltas = {k: (after[k] - p).detach().float().cpu() for k, p in before.items() if after[k] is not p}
    if not deltas:
        raise ValueError("adaptation moved no tensor (none of the adapted tensors gets a gradient)")
    return deltas


class Adapter(ABC):
    """One adaptation method of a model file."""

    method: ClassVar[str]

    @abstractmethod
    def extras(self) -> dict[str, str]:
        """Bundle metadata describing the method."""

    def state_dict(self) -> dict[str, Tensor]:
        """Bundle tensors of the method, prefixed (``meta.`` or ``codes.``)."""
        return {}

    def to(self, device: torch.device) -> Adapter:
        return self

    @abstractmethod
    def adapt(self, model: HTRModel, support: Support, steps: int | None) -> tuple[dict[str, Tensor], dict]:
        """The profile payload and its info for one writer (runs with gradients)."""

    def check(self, profile: WriterProfile) -> None:
        """Refuse a profile this model file cannot decode with."""
        if profile.method == "writer-code":
            raise ProfileError(f"{profile.name}: a writer-code profile needs a model file with a writer-code "
                               "adapter; this one has none")


class FinetuneAdapter(Adapter):
    """The MAML-style baseline for plain base models (module docstring)."""

    method = "finetune"

    def __init__(self, cfg: FinetuneConfig | None = None) -> None:
        self.cfg = cfg or FinetuneConfig()

    def extras(self) -> dict[str, str]:
        return {"adaptation": json.dumps(asdict(self.cfg))}

    def adapt(self, model: HTRModel, support: Support, steps: int | None) -> tuple[dict[str, Tensor], dict]:
        wanted = set(adapted_names(model, self.cfg.adapt))
        params = {n: p for n, p in model.named_parameters() if n in wanted}
        device = support.batch.images.device
        lrs = {n: torch.tensor(self.cfg.lr, device=device) for n in params}
        steps = steps or self.cfg.steps
        fast = inner_adapt(model, params, support.batch, lrs, num_steps=steps, create_graph=False)
        return _deltas(params, fast), {"steps": steps, "lr": self.cfg.lr, "adapt": list(self.cfg.adapt)}


class MetaHTRAdapter(Adapter):
    """MetaHTR's learned inner loop (α, g_γ from the model file)."""

    method = "metahtr"

    def __init__(self, meta: MetaHTR) -> None:
        self.meta = meta.eval()

    def extras(self) -> dict[str, str]:
        return {"metahtr": json.dumps(self.meta.cfg.to_dict())}

    def state_dict(self) -> dict[str, Tensor]:
        return {META + k: v for k, v in self.meta.state_dict().items()}

    def to(self, device: torch.device) -> MetaHTRAdapter:
        self.meta.to(device)
        return self

    def adapt(self, model: HTRModel, support: Support, steps: int | None) -> tuple[dict[str, Tensor], dict]:
        cfg, params = self.meta.cfg, self.meta.base_params(model)
        steps = steps or cfg.num_inner_steps
        fast = inner_adapt(model, params, support.batch, self.meta.inner_lr(),
                           weight_net=self.meta.weight_net, num_steps=steps, create_graph=False,
                           label_smoothing=cfg.label_smoothing)
        return _deltas(params, fast), {"steps": steps, "metahtr": cfg.to_dict()}


class WriterCodeAdapter(Adapter):
    """A new writer's code for the model file's writer-code adapter.

    Args:
        codes: the adapter around the recognizer's model (its backbone BatchNorms conditioned in place).
        adaptation: steps, lr and optimiser of learned codes (§11: one SGD step at 1e-4).
        seed: of the N(0, 1) start, so the same samples give the same profile.
    """

    method = "writer-code"

    def __init__(self, codes: WriterCodeModel, adaptation: CodeAdaptation | None = None,
                 seed: int = 0) -> None:
        self.codes, self.adaptation, self.seed = codes.eval(), adaptation or CodeAdaptation(), seed

    def extras(self) -> dict[str, str]:
        return {"writer_codes": json.dumps(self.codes.cfg.to_dict()),
                "code_adaptation": json.dumps({**asdict(self.adaptation), "seed": self.seed})}

    def state_dict(self) -> dict[str, Tensor]:
        return {CODES + k: v for k, v in self.codes.state_dict().items()
                if not k.startswith("base.") and k not in _DROPPED_CODE_STATE}

    def to(self, device: torch.device) -> WriterCodeAdapter:
        self.codes.to(device)
        return self

    def adapt(self, model: HTRModel, support: Support, steps: int | None) -> tuple[dict[str, Tensor], dict]:
        cfg, batch = self.codes.cfg, support.batch
        if cfg.source == "hinge":
            from data.hinge import HingeConfig, writer_hinge

            if any(g is None for g in support.grey):
                raise ValueError("Hinge writer codes need the original images (paths or arrays), not "
                                 "pre-normalised HandwritingImage pixels")
            code = self.codes.hinge_code(writer_hinge(support.grey, HingeConfig(cfg.hinge_bins,
                                                                                cfg.hinge_leg_length)))
        else:
            adaptation = self.adaptation if steps is None else replace(self.adaptation, steps=steps)
            generator = torch.Generator().manual_seed(self.seed)
            code = self.codes.adapt(batch.images, batch.mask, batch.inputs, batch.targets, adaptation,
                                    generator, seed=self.seed)
        info = {"adapter": cfg.to_dict(), "code_method": code.method, **dict(code.metadata)}
        return {"code": code.tensor()}, info

    def check(self, profile: WriterProfile) -> None:
        if profile.method != "writer-code":
            return  # deltas of base tensors decode with any adapter (the base digest was checked)
        adapter = profile.info.get("adapter")
        if adapter != self.codes.cfg.to_dict() or profile.code.numel() != self.codes.code_size:
            raise ProfileError(f"{profile.name}: the writer code was made for another writer-code adapter "
                               f"({adapter}) than this model file's ({self.codes.cfg.to_dict()})")


# ----- model files ---------------------------------------------------------------------------------
def _json(extras: Mapping[str, str], key: str) -> dict[str, Any]:
    try:
        value = json.loads(extras[key])
    except ValueError as exc:
        raise CheckpointError(f"handwriting metadata {key!r} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"handwriting metadata {key!r} is not a JSON object")
    return value


def _built(kind: str, build: Callable[[], T]) -> T:
    try:
        return build()
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"handwriting {kind} state unusable: {exc}") from exc


def inference_bundle(bundle: Bundle) -> Bundle:
    """A training checkpoint's bundle in the handwriting model-file form (idempotent).

    * ``MetaHTRModule`` checkpoints: the ``meta.*`` tensors (outside the model, so in
      ``Bundle.extra_state``) join the weights;
    * ``WriterCodeModule`` checkpoints (model "handwriting-writer-codes", weights ``base.*`` + adapter):
      ``base.X`` → ``X``, the adapter under ``codes.``, the training writers' code table dropped.
    """
    state, extras = dict(bundle.state_dict), dict(bundle.extras)
    if "metahtr" in extras and not any(k.startswith(META) for k in state):
        state.update({k: v for k, v in bundle.extra_state.items() if k.startswith(META)})
    training_layout = any(k.startswith("base.") for k in state)
    if bundle.model == LEGACY_CODES_MODEL or ("writer_codes" in extras and training_layout):
        state = {(k.removeprefix("base.") if k.startswith("base.") else CODES + k): v
                 for k, v in state.items() if k not in _DROPPED_CODE_STATE}
        extras.pop("writers", None)
    return replace(bundle, model="handwriting", state_dict=state, extras=extras, extra_state={})


def adapter_from_bundle(model: HTRModel, extras: Mapping[str, str], state: Mapping[str, Tensor]) -> Adapter:
    """The adapter a model file describes (module docstring); ``state`` holds its prefixed tensors.

    Raises:
        CheckpointError: unusable metadata, tensors that do not fit, or both MetaHTR and writer codes.
    """
    if "metahtr" in extras and "writer_codes" in extras:
        raise CheckpointError("a handwriting model file with both MetaHTR and writer-code state")
    if "metahtr" in extras:
        cfg = _built("MetaHTR", lambda: MetaHTRConfig.from_dict(_json(extras, "metahtr")))
        meta = _built("MetaHTR", lambda: MetaHTR(model, cfg))
        _load(meta, {k[len(META):]: v for k, v in state.items() if k.startswith(META)}, "MetaHTR", ())
        return MetaHTRAdapter(meta)
    if "writer_codes" in extras:
        cfg = _built("writer-code", lambda: WriterCodeConfig.from_dict(_json(extras, "writer_codes")))
        options = _json(extras, "code_adaptation") if "code_adaptation" in extras else {}
        seed = int(options.pop("seed", 0))
        adaptation = _built("writer-code", lambda: CodeAdaptation(**options))
        codes = _built("writer-code", lambda: WriterCodeModel(model, cfg, num_writers=1))
        own = {k[len(CODES):]: v for k, v in state.items() if k.startswith(CODES)}
        _load(codes, own, "writer-code", ("base.", *_DROPPED_CODE_STATE))
        return WriterCodeAdapter(codes, adaptation, seed)
    options = _json(extras, "adaptation") if "adaptation" in extras else {}
    return FinetuneAdapter(_built("fine-tuning", lambda: FinetuneConfig(**options)))


def _load(module: nn.Module, state: Mapping[str, Tensor], kind: str, optional: tuple[str, ...]) -> None:
    try:
        missing, unexpected = module.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        raise CheckpointError(f"handwriting {kind} tensors do not fit the model: {exc}") from exc
    missing = [k for k in missing if not k.startswith(optional)]
    if missing or unexpected:
        raise CheckpointError(f"handwriting {kind} tensors do not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


# ----- decoding with a profile -----------------------------------------------------------------------
class _Swapped(nn.Module):
    """Runs a callable while ``functional_call`` has swapped the wrapped model's parameters."""

    def __init__(self, model: HTRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[], T]) -> T:
        return fn()


def _adapted_params(model: HTRModel, profile: WriterProfile) -> dict[str, Tensor]:
    own = dict(model.named_parameters())
    bad = [k for k, d in profile.deltas.items() if k not in own or own[k].shape != d.shape]
    if bad:
        raise ProfileError(f"{profile.name}: the profile's tensors do not fit this model: {bad[:5]}")
    return {k: (own[k] + d.to(own[k])).detach() for k, d in profile.deltas.items()}


def decode_adapted(model: HTRModel, adapter: Adapter, profile: WriterProfile,
                   search: Callable[[FeatureHook | None], T]) -> T:
    """Run ``search(feature_hook)`` (encode and decode with ``model``) under a checked profile.

    Raises:
        ProfileError: the profile does not fit the model or its adapter.
    """
    adapter.check(profile)
    if profile.method != "writer-code":
        params = {f"model.{k}": v for k, v in _adapted_params(model, profile).items()}
        return functional_call(_Swapped(model), params, (lambda: search(None),))
    codes = adapter.codes  # type: ignore[attr-defined]  (check() ensured a WriterCodeAdapter)
    code = profile.code.to(next(model.parameters()).device).reshape(1, -1)  # (1, c)
    with codes.conditioned(code):
        return search(codes.feature_hook(code))
