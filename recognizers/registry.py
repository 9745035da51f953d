"""The bundled models: name → task, recognizer class and weights file (architecture.md §3).

Weights live in ``recognizers/weights/`` (package data) or in ``$RECOGNIZERS_WEIGHTS_DIR`` when set (a
freshly exported model); nothing is downloaded.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["ALIASES", "REGISTRY", "TASKS", "ModelSpec", "find_spec", "weights_path"]

TASKS = ("math", "text", "speech")


@dataclass(frozen=True)
class ModelSpec:
    """One registered recognizer."""

    name: str  # what ``recognizers.load`` takes
    task: str  # one of TASKS
    recognizer: str  # "module:Class" of its Recognizer, imported on demand
    weights: str  # bundled file name under recognizers/weights/

    def recognizer_class(self) -> type:
        module, _, cls = self.recognizer.partition(":")
        return getattr(importlib.import_module(module), cls)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("posformer", "math", "recognizers.posformer.recognizer:PosFormerRecognizer",
                  "posformer.safetensors"),
        ModelSpec("handwriting", "text", "recognizers.handwriting.recognizer:HandwritingRecognizer",
                  "handwriting.safetensors"),
        ModelSpec("samba-asr", "speech", "recognizers.samba_asr.recognizer:SambaASRRecognizer",
                  "samba_asr.safetensors"),
    )
}

# Model names that training checkpoints carry for a registered recognizer: writer-code training
# (training/writer_codes_module.py) saves "handwriting-writer-codes"; the handwriting recognizer's
# ``inference_bundle`` turns such a checkpoint into a handwriting model file.
ALIASES: dict[str, str] = {"handwriting-writer-codes": "handwriting"}


def find_spec(model: str) -> ModelSpec | None:
    """The registered recognizer of a model file's model name (aliases included); None if unknown."""
    return REGISTRY.get(ALIASES.get(model, model))


def weights_path(spec: ModelSpec) -> Path:
    """The weights file of a registered model: ``$RECOGNIZERS_WEIGHTS_DIR/<file>`` if that exists,
    else the bundled package data."""
    override = os.environ.get("RECOGNIZERS_WEIGHTS_DIR")
    if override and (Path(override) / spec.weights).is_file():
        return Path(override) / spec.weights
    return Path(str(resources.files("recognizers") / "weights" / spec.weights))
