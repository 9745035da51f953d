"""The fused backends as ``torch.library`` custom ops, so ``torch.compile`` and ``torch.export`` trace
through them instead of breaking the graph (the pybind op of the Mamba reference does break it).

    recognizers::selective_scan_fwd   -> (out, last_state, checkpoints, y_pre)
    recognizers::selective_scan_bwd   -> gradients of every input (empty tensors for absent ones)

Both take a ``backend`` string (``"cpu"`` or ``"triton"``) chosen by ``kernels.dispatch``; fake
(meta) implementations give the output shapes, and ``register_autograd`` wires the backward op, so
the backward is traced as well. ``y_pre`` is what a backend saves of y before the gate for the
backward (the CPU kernel, when z is given), an empty tensor otherwise. Shapes follow the legend of
``kernels._common``.
"""

import math

import torch

from .dispatch import triton_module

__all__ = ["selective_scan_bwd", "selective_scan_fwd"]

Tensor = torch.Tensor


def _backend(name: str):
    if name == "cpu":
        from . import cpu

        return cpu
    if name == "triton":
        return triton_module()
    raise ValueError(f"selective_scan ops run the fused backends 'cpu' or 'triton', not {name!r}")


def _state_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


@torch.library.custom_op("recognizers::selective_scan_fwd", mutates_args=())
def selective_scan_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, initial_state: Tensor | None, mask: Tensor | None,
    delta_softplus: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused forward: out `(Bsz, D, L)`, last state `(Bsz, D, N)`, checkpoints `(Bsz, D, chunks, N)`,
    y_pre `(Bsz, D, L)` or `(0,)`."""
    return _backend(backend).forward(u, delta, A, B, C, D, z, delta_bias, initial_state, mask,
                                     delta_softplus)


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus, backend):
    bsz, dim, length = u.shape
    n = A.shape[1]
    chunks = math.ceil(length / _backend(backend).CHUNK)
    st = _state_dtype(u)
    saves_y = backend == "cpu" and z is not None
    return (u.new_empty(bsz, dim, length), u.new_empty(bsz, dim, n, dtype=st),
            u.new_empty(bsz, dim, chunks, n, dtype=st),
            u.new_empty((bsz, dim, length) if saves_y else (0,), dtype=st))


@torch.library.custom_op("recognizers::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(
    grad_out: Tensor, grad_last_state: Tensor | None, u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
    C: Tensor, D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None,
    initial_state: Tensor | None, mask: Tensor | None, checkpoints: Tensor, y_pre: Tensor,
    delta_softplus: bool, backend: str,
) -> list[Tensor]:
    """Fused backward: [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0], empty where absent."""
    grads = _backend(backend).backward(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias,
                                       initial_state, mask, delta_softplus, checkpoints,
                                       y_pre=y_pre if z is not None else None)
    return [u.new_empty(0) if g is None else g for g in grads]


@selective_scan_bwd.register_fake
def _(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, initial_state, mask, checkpoints,
      y_pre, delta_softplus, backend):
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return [u.new_empty(0) if x is None else torch.empty_like(x) for x in inputs]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, mask, output[2], output[3])
    ctx.delta_softplus = delta_softplus
    ctx.backend = backend
    ctx.set_materialize_grads(False)  # an unused last_state (the usual case) costs nothing


def _backward(ctx, grad_out, grad_last_state, _grad_checkpoints, _grad_y_pre):
    u, delta, A, B, C, D, z, delta_bias, initial_state, mask, checkpoints, y_pre = ctx.saved_tensors
    grad_out = torch.zeros_like(u) if grad_out is None else grad_out.contiguous()
    grads = selective_scan_bwd(grad_out, grad_last_state, u, delta, A, B, C, D, z,
                               delta_bias, initial_state, mask, checkpoints, y_pre, ctx.delta_softplus,
                               ctx.backend)
    present = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    grads = [g if x is not None else None for g, x in zip(grads, present, strict=True)]
    return (*grads, None, None, None)  # no gradient for mask, delta_softplus, backend


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)
