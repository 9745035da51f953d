"""The one place where a selective-scan backend is chosen (architecture.md, design rule 5).

Backends:

    reference  sequential recurrence in Python (kernels.reference): the spec, slow
    chunked    two-level chunked scan in pure PyTorch (kernels.chunked): portable, stable
    cpu        fused C++ kernel with a hand-written backward (kernels.cpu): the CPU fast path
    triton     Triton GPU kernels (kernels.triton_scan): the CUDA fast path

``"auto"`` picks triton for CUDA tensors and cpu for CPU tensors. When that fast path cannot run
(triton missing, no C++ compiler), it falls back to the best portable path for the device and warns
once per reason: a missing fast path must never make code silently slower. The portable fallback is
chunked on GPUs (about 2√L kernel launches instead of L) and the reference on CPUs, where the
chunked scan's extra passes over `(B, D, L, N)` tensors make it the slower and hungrier of the two
(benchmarks/scan_speed.py: 2x the time and 2.8x the memory of the reference at L = 1024).
``RECOGNIZERS_SCAN_STRICT=1`` raises instead.
``RECOGNIZERS_SCAN_BACKEND=reference|chunked|cpu|triton`` replaces ``"auto"`` (an explicit backend
argument still wins). float64 on CUDA runs chunked (the Triton kernels compute in float32).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import warnings
from types import ModuleType

import torch

__all__ = ["BACKENDS", "BackendUnavailableError", "resolve_backend", "triton_module"]

log = logging.getLogger(__name__)

BACKENDS = ("reference", "chunked", "cpu", "triton")


class BackendUnavailableError(RuntimeError):
    """A requested selective-scan backend cannot run here (raised in strict mode)."""


def _strict() -> bool:
    return os.environ.get("RECOGNIZERS_SCAN_STRICT", "").strip().lower() in {"1", "true", "yes", "on"}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@functools.cache
def _triton_import() -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module("kernels.triton_scan"), ""
    except ImportError as exc:  # triton absent or broken
        return None, f"triton is not importable ({exc})"


def triton_module() -> ModuleType:
    """The Triton backend module, imported on first use (never by ``import kernels``)."""
    module, err = _triton_import()
    if module is None:
        raise BackendUnavailableError(err)
    return module


def _unavailable_reason(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Why ``backend`` cannot run for tensors on ``device``; '' when it can."""
    if backend == "cpu":
        if device.type != "cpu":
            return f"the fused CPU kernel needs CPU tensors, got {device}"
        from . import cpu

        return "" if cpu.available() else f"the fused CPU kernel could not be built: {cpu.build_error()}"
    if backend == "triton":
        if device.type != "cuda" and not _interpreting():
            return f"the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got {device}"
        if dtype == torch.float64:
            return "the Triton kernels compute in float32; float64 needs the chunked backend"
        return _triton_import()[1]
    return ""


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)
    log.warning(message)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Turn a requested backend (or ``"auto"``) into one that can run on ``device``.

    Args:
        backend: ``"auto"`` or one of ``BACKENDS``.
        device: the device of the inputs.
        dtype: the dtype of u.

    Returns:
        The backend name to run.

    Raises:
        ValueError: ``backend`` (or the environment override) is not a known name.
        BackendUnavailableError: in strict mode, when the wanted backend cannot run.
    """
    if backend == "auto":
        backend = os.environ.get("RECOGNIZERS_SCAN_BACKEND", "").strip().lower() or "auto"
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"unknown selective-scan backend {backend!r}; choose auto or one of {BACKENDS}")
    if backend == "auto":
        if device.type == "cuda":
            backend = "chunked" if dtype == torch.float64 else "triton"
        else:
            backend = "cpu" if device.type == "cpu" else "chunked"
    reason = _unavailable_reason(backend, device, dtype)
    if not reason:
        return backend
    if _strict():
        raise BackendUnavailableError(f"selective-scan backend {backend!r} unavailable: {reason}")
    fallback = "reference" if device.type == "cpu" else "chunked"
    _warn_once(f"selective-scan backend {backend!r} unavailable ({reason}); falling back to {fallback!r}, "
               "which is much slower. Set RECOGNIZERS_SCAN_STRICT=1 to make this an error.")
    return fallback


# The choice depends only on trace-time constants, so torch.compile should call it once while tracing
# instead of tracing into environment lookups and the compiler probe. This flag is exactly what
# torch.compiler.assume_constant_result sets; setting it directly avoids importing torch._dynamo
# (and with it triton) when ``kernels`` is imported. tests/test_kernels_api.py compiles through it.
resolve_backend._dynamo_marked_constant = True  # type: ignore[attr-defined]
