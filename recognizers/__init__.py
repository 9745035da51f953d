"""recognizers: handwritten math to LaTeX, handwriting to text, speech to text.

Public API (interfaces.md)::

    import recognizers
    recognizers.available()                   # registered model names
    r = recognizers.load("samba-asr")         # bundled weights; or a path to a .safetensors / .ckpt
    results = r.recognize(["a.flac"])         # one frozen Result per input

The selective-scan kernels live in the top-level package ``kernels``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import InputError, Recognizer, Result, Word

if TYPE_CHECKING:
    import torch

__all__ = ["InputError", "Recognizer", "Result", "Word", "__version__", "available", "load"]

__version__ = "0.1.0"


def available() -> list[str]:
    """Names of the registered models whose weights are present."""
    from .registry import REGISTRY, weights_path

    return [name for name, spec in REGISTRY.items() if weights_path(spec).is_file()]


def load(name_or_path: str | Path, *, device: str | torch.device | None = None) -> Recognizer:
    """Build a recognizer from a registry name or a model file (``.safetensors`` or ``.ckpt``).

    Args:
        name_or_path: e.g. ``"samba-asr"``, or a file written by ``recognizers export`` / training.
        device: ``"cpu"``, ``"cuda"``...; None picks CUDA when available.

    Raises:
        ValueError: unknown name; ``recognizers.checkpoint.CheckpointError`` for a bad file.
    """
    import torch

    from .checkpoint import CheckpointError, read_bundle
    from .registry import REGISTRY, find_spec, weights_path

    name = str(name_or_path)
    if name in REGISTRY:
        spec, path = REGISTRY[name], weights_path(REGISTRY[name])
        if not path.is_file():
            raise ValueError(f"model {name!r}: its weights file {path} is missing (not in this install)")
    elif Path(name).suffix in (".safetensors", ".ckpt"):
        path = Path(name)
        spec = None
    else:
        raise ValueError(f"unknown model {name!r}: use one of {sorted(REGISTRY)} or a .safetensors/.ckpt")
    bundle = read_bundle(path)
    if spec is None:
        spec = find_spec(bundle.model)
        if spec is None:
            raise ValueError(f"{path}: model type {bundle.model!r} is not one of {sorted(REGISTRY)}")
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    try:
        return spec.recognizer_class().from_bundle(bundle, device=device)
    except CheckpointError as exc:  # from_bundle knows the contents, not the file: name it here
        raise CheckpointError(f"{path}: {exc}") from exc
