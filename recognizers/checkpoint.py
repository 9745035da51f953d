"""Model files: bundled ``.safetensors`` (weights + config metadata, no pickle) and Lightning ``.ckpt``
read with ``torch.load(weights_only=True)`` only (architecture.md rule 10, platform.md §7).

Metadata keys of a bundle (all strings): ``recognizers.model`` (registry name), ``recognizers.config``
(JSON of the model's frozen config), ``recognizers.format`` ("1") and model-specific extras such as
``recognizers.tokenizer`` (base64 of the sentencepiece model) or ``recognizers.vocab`` (PosFormer: JSON
list of the vocabulary's tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Bundle", "CheckpointError", "export_checkpoint", "load_weights", "read_bundle", "save_bundle"]

FORMAT = "1"
_PREFIX = "recognizers."


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Bundle:
    """Everything needed to rebuild a model: registry name, config, extras and weights.

    ``extra_state`` holds a training checkpoint's tensors outside its ``model.*`` (e.g. MetaHTR's
    ``meta.*``) for the recognizer's ``inference_bundle`` hook to keep or drop; ``save_bundle`` never
    writes it.
    """

    model: str
    config: dict[str, Any]
    extras: dict[str, str]
    state_dict: dict[str, torch.Tensor]
    extra_state: dict[str, torch.Tensor] = field(default_factory=dict)


def save_bundle(path: str | Path, bundle: Bundle) -> Path:
    """Write ``bundle`` as safetensors (written to a temporary name, then renamed)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {f"{_PREFIX}model": bundle.model, f"{_PREFIX}config": json.dumps(bundle.config),
                f"{_PREFIX}format": FORMAT, **{f"{_PREFIX}{k}": v for k, v in bundle.extras.items()}}
    tensors = {k: v.detach().contiguous().cpu() for k, v in bundle.state_dict.items()}
    tmp = path.with_name(path.name + ".part")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def _from_safetensors(path: Path) -> Bundle:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if f"{_PREFIX}model" not in meta or f"{_PREFIX}config" not in meta:
        raise CheckpointError(f"{path}: safetensors file without recognizers metadata (model, config); "
                              "export models with `recognizers export`")
    extras = {k[len(_PREFIX):]: v for k, v in meta.items()
              if k.startswith(_PREFIX) and k[len(_PREFIX):] not in ("model", "config", "format")}
    return Bundle(meta[f"{_PREFIX}model"], json.loads(meta[f"{_PREFIX}config"]), extras, state)


def _from_lightning(path: Path) -> Bundle:
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe pickles
        raise CheckpointError(f"{path}: cannot read Lightning checkpoint ({exc})") from exc
    info = ckpt.get("recognizers") if isinstance(ckpt, dict) else None
    if not info:
        raise CheckpointError(f"{path}: checkpoint has no 'recognizers' entry (not trained by this project)")
    if not isinstance(info, dict) or not {"model", "config"} <= set(info) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: checkpoint without 'state_dict' or the model and config of its "
                              "'recognizers' entry")
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    other = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("model.")}
    extras = {k: v for k, v in info.items() if k not in ("model", "config") and isinstance(v, str)}
    return Bundle(info["model"], info["config"], extras, state, other)


def read_bundle(path: str | Path) -> Bundle:
    """Read a ``.safetensors`` bundle or a Lightning ``.ckpt`` of this project.

    Raises:
        CheckpointError: missing, unreadable, or not a recognizers model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    if path.suffix == ".ckpt":
        return _from_lightning(path)
    return _from_safetensors(path)


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """``recognizers export``: Lightning checkpoint → inference bundle (no optimizer state).

    A registered model's recognizer class (found through ``registry.find_spec``, aliases included) may
    define ``inference_bundle(bundle) -> Bundle`` to drop training-only weights (PosFormer's position
    branch) or keep adaptation state (the handwriting model's MetaHTR ``meta.*`` tensors from
    ``Bundle.extra_state``); it is applied before writing.

    Raises:
        CheckpointError: unreadable checkpoint, or one the model's hook rejects.
    """
    from .registry import find_spec

    bundle = read_bundle(ckpt)
    spec = find_spec(bundle.model)
    hook = getattr(spec.recognizer_class(), "inference_bundle", None) if spec is not None else None
    if hook is not None:
        try:
            bundle = hook(bundle)
        except CheckpointError as exc:
            raise CheckpointError(f"{ckpt}: {exc}") from exc
    return save_bundle(out, bundle)


def load_weights(model: Any, state_dict: dict, what: str) -> None:
    """Load ``state_dict`` into ``model``, every weight matching exactly.

    Raises:
        CheckpointError: shape mismatches, missing or unexpected weights (``what`` names the model).
    """
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        raise CheckpointError(f"{what} weights do not match the config: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{what} weights do not match the config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
