"""Fused CPU selective scan: C++ recurrence per (batch, channel) row, all cores, hand-written backward.

The kernel lives in ``kernels/csrc/scan_cpu.cpp`` (plain C ABI, no torch headers). It is compiled
at first use with the system C++ compiler (``$CXX``, default ``g++``) into a per-user cache
(``$RECOGNIZERS_CACHE_DIR`` or ``~/.cache/recognizers``), keyed by the source, the flags and the CPU,
and loaded with ctypes; nothing is compiled at install time. When no compiler is available
``available()`` is False and the dispatcher falls back to the chunked PyTorch scan (with one warning).

Memory: the forward saves the state entering every ``CHUNK`` steps, `(Bsz, D, ceil(L/CHUNK), N)`, and,
when z is given, y before the gate `(Bsz, D, L)`; the backward recomputes one chunk at a time from the
states (samba-asr.md §2.1, §6.2). No `(Bsz, D, L, N)` tensor is ever allocated. Shapes follow the
legend of ``kernels._common``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["CHUNK", "available", "backward", "build_error", "forward"]

log = logging.getLogger(__name__)

CHUNK = 64  # checkpoint interval along L; the backward's scratch is CHUNK x N per thread
_SOURCE = Path(__file__).with_name("csrc") / "scan_cpu.cpp"
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
          "-std=c++17", "-shared", "-fPIC"]

_P = ctypes.c_void_p
_I = ctypes.c_int64


class _Args(ctypes.Structure):
    """Mirror of ``Args<T>`` in scan_cpu.cpp (same field order, so the same layout)."""

    _fields_ = [
        *[(f, _I) for f in ("batch", "dim", "len", "dstate", "chunk")],
        *[(f, _P) for f in ("u", "delta", "A", "Bm", "Cm", "Dskip", "z", "dbias", "h0", "mask")],
        *[(f, _I) for f in ("b_sb", "b_sg", "b_st", "b_dpg", "c_sb", "c_sg", "c_st", "c_dpg")],
        ("softplus", ctypes.c_int32),
        *[(f, _P) for f in ("out", "last", "ckpt", "ypre", "dout", "dlast", "du", "ddelta", "dz", "dh0",
                            "dA", "dB", "dC", "dD", "ddbias")],
        ("b_size", _I),
        ("c_size", _I),
    ]


def _cache_dir() -> Path:
    root = os.environ.get("RECOGNIZERS_CACHE_DIR") or Path.home() / ".cache" / "recognizers"
    path = Path(root) / "kernels"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home (containers, CI sandboxes): build in a per-user temp folder
        path = Path(tempfile.gettempdir()) / f"recognizers-{os.getuid()}" / "kernels"
    return path


def _cpu_fingerprint() -> str:
    # -march=native code must not be reused on a CPU with other instruction sets.
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + flags


def _compile(cxx: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_so = Path(tmp) / target.name
        proc = subprocess.run([cxx, *_FLAGS, str(_SOURCE), "-o", str(tmp_so)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed on {_SOURCE}:\n{proc.stderr[-2000:]}")
        os.replace(tmp_so, target)  # atomic, so concurrent builders never see a partial file


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """Build (once per source/CPU) and load the kernel; returns (library or None, error message)."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        return None, f"no C++ compiler found ({cxx!r} is not on PATH)"
    sources = b"".join(f.read_bytes() for f in sorted(_SOURCE.parent.glob("*.[ch]*")))
    key = hashlib.sha256(sources + " ".join([cxx, *_FLAGS, _cpu_fingerprint()]).encode())
    target = _cache_dir() / f"scan_cpu_{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            log.info("compiling the fused CPU selective scan into %s", target)
            _compile(cxx, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    for name in ("scan_f32_fwd", "scan_f32_bwd", "scan_f64_fwd", "scan_f64_bwd"):
        getattr(lib, name).argtypes = [ctypes.POINTER(_Args), ctypes.c_int]
        getattr(lib, name).restype = ctypes.c_int
    return lib, ""


def available() -> bool:
    """True when the kernel is compiled (or compiles now) and loads."""
    return _library()[0] is not None


def build_error() -> str:
    """Why the kernel is unavailable ('' when it is available)."""
    return _library()[1]


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _bc_layout(x: torch.Tensor, ct: torch.dtype, dim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Contiguous compact copy of B or C plus (batch, group, time strides, channels per group)."""
    if x.dim() == 2:  # (D, N): time-invariant, every channel its own group
        xc = x.to(ct).contiguous()
        return xc, (0, xc.shape[1], 0, 1)
    xc = (x[:, None] if x.dim() == 3 else x).to(ct).transpose(-1, -2).contiguous()  # (Bsz, G, L, N)
    _, g, length, n = xc.shape
    return xc, (g * length * n, length * n, n, dim // g)


def _prepare(u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus):
    """Cast to the compute dtype, make contiguous and fill the argument struct (inputs only)."""
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    bsz, dim, length = u.shape

    def c(t):
        return None if t is None else t.to(ct).contiguous()

    keep = {"u": c(u), "delta": c(delta), "A": c(A), "Dskip": c(D), "z": c(z), "dbias": c(delta_bias),
            "h0": c(initial_state), "mask": None if mask is None else mask.to(torch.uint8).contiguous()}
    keep["Bm"], bl = _bc_layout(B, ct, dim)
    keep["Cm"], cl = _bc_layout(C, ct, dim)
    args = _Args(batch=bsz, dim=dim, len=length, dstate=A.shape[1], chunk=CHUNK,
                 softplus=int(delta_softplus), b_size=keep["Bm"].numel(), c_size=keep["Cm"].numel())
    for name, t in keep.items():
        setattr(args, name, _ptr(t))
    args.b_sb, args.b_sg, args.b_st, args.b_dpg = bl
    args.c_sb, args.c_sg, args.c_st, args.c_dpg = cl
    return args, keep, ct


def _call(name: str, ct: torch.dtype, args: _Args) -> None:
    lib, err = _library()
    if lib is None:
        raise RuntimeError(f"fused CPU selective scan unavailable: {err}")
    prefix = "scan_f64" if ct == torch.float64 else "scan_f32"
    getattr(lib, f"{prefix}_{name}")(ctypes.byref(args), torch.get_num_threads())


def forward(u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus):
    """Fused forward. Arguments as ``kernels.reference.selective_scan_ref`` (already validated).

    Returns:
        out `(Bsz, D, L)` in u's dtype, last state `(Bsz, D, N)`, checkpoints
        `(Bsz, D, ceil(L/CHUNK), N)` (the state entering each chunk) and, when z is given, y before
        the gate `(Bsz, D, L)` (else an empty tensor), all three in the compute dtype. The backward
        reads y instead of recomputing Σ_n C·h for dz (one FMA per state element, ~10 % of it).
    """
    args, _keep, ct = _prepare(u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus)
    bsz, dim, length = u.shape
    n = A.shape[1]
    out = torch.empty(bsz, dim, length, dtype=ct)
    last = torch.empty(bsz, dim, n, dtype=ct)
    ckpt = torch.empty(bsz, dim, -(-length // CHUNK), n, dtype=ct)
    y_pre = torch.empty(bsz, dim, length, dtype=ct) if z is not None else torch.empty(0, dtype=ct)
    args.out, args.last, args.ckpt = out.data_ptr(), last.data_ptr(), ckpt.data_ptr()
    args.ypre = y_pre.data_ptr() if z is not None else None
    if length == 0:
        last.copy_(initial_state if initial_state is not None else torch.zeros_like(last))
    else:
        _call("fwd", ct, args)
    return out.to(u.dtype), last, ckpt, y_pre


def backward(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, initial_state, mask,
             delta_softplus, checkpoints, y_pre=None):
    """Fused backward from the saved checkpoints and, when z is given, the forward's y before the gate
    (``y_pre``, required then).

    Returns:
        (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0), each shaped and typed like its input;
        None where the input was None. ddelta is the gradient w.r.t. the raw delta.
    """
    args, keep, ct = _prepare(u, delta, A, B, C, D, z, delta_bias, initial_state, mask, delta_softplus)
    bsz, dim, length = u.shape
    n = A.shape[1]
    threads = torch.get_num_threads()
    g = grad_out.to(ct).contiguous()
    gl = None if grad_last_state is None else grad_last_state.to(ct).contiguous()
    ck = checkpoints.to(ct).contiguous()
    if z is not None:
        if y_pre is None or y_pre.shape != u.shape:
            raise ValueError("cpu.backward with z needs y_pre (Bsz, D, L) from cpu.forward")
        keep["ypre"] = y_pre.to(ct).contiguous()
        args.ypre = keep["ypre"].data_ptr()
    du, ddelta = torch.empty(bsz, dim, length, dtype=ct), torch.empty(bsz, dim, length, dtype=ct)
    dz = None if z is None else torch.empty(bsz, dim, length, dtype=ct)
    dh0 = None if initial_state is None else torch.empty(bsz, dim, n, dtype=ct)
    dA = torch.zeros(threads, dim, n, dtype=ct)
    dB = torch.zeros(threads, *keep["Bm"].shape, dtype=ct)
    dC = torch.zeros(threads, *keep["Cm"].shape, dtype=ct)
    dD = None if D is None else torch.zeros(threads, dim, dtype=ct)
    ddb = None if delta_bias is None else torch.zeros(threads, dim, dtype=ct)
    out_ptrs = {"dout": g, "dlast": gl, "ckpt": ck, "du": du, "ddelta": ddelta, "dz": dz, "dh0": dh0,
                "dA": dA, "dB": dB, "dC": dC, "dD": dD, "ddbias": ddb}
    for name, t in out_ptrs.items():
        setattr(args, name, _ptr(t))
    if length == 0:
        if dh0 is not None:
            dh0.copy_(gl if gl is not None else torch.zeros_like(dh0))
    else:
        _call("bwd", ct, args)
    return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).to(A.dtype),
            _bc_grad(dB.sum(0), B), _bc_grad(dC.sum(0), C),
            None if dD is None else dD.sum(0).to(D.dtype), None if dz is None else dz.to(z.dtype),
            None if ddb is None else ddb.sum(0).to(delta_bias.dtype),
            None if dh0 is None else dh0.to(initial_state.dtype))


def _bc_grad(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Undo ``_bc_layout``: (Bsz, G, L, N) back to the caller's B/C layout."""
    if like.dim() == 2:
        return g.to(like.dtype)
    g = g.transpose(-1, -2)  # (Bsz, G, N, L)
    return (g[:, 0] if like.dim() == 3 else g).to(like.dtype)
