"""Peak resident memory of a piece of work, for reports such as the writer-adaptation table.

Linux keeps a per-process high-water mark of the resident set (``VmHWM`` in ``/proc/self/status``) that
writing ``5`` to ``/proc/self/clear_refs`` resets to the current resident set; the rise of that mark while
a block runs is the extra memory the block needed at its peak, tensors and allocator overhead included
(PyTorch's CPU tensors are invisible to ``tracemalloc``). Where either file is missing or not writable
(other systems, some sandboxes) the measurement is ``None`` rather than a guess.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PeakRSS", "status_kib"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def status_kib(field: str) -> int | None:
    """A field of ``/proc/self/status`` in KiB (``VmRSS``: resident now, ``VmHWM``: its peak), or None."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakRSS:
    """Context manager: ``mib`` is the rise of the resident set's peak over its value at entry, in MiB.

    Example::

        with PeakRSS() as peak:
            work()
        print(peak.mib)  # None when this system cannot measure it
    """

    def __init__(self) -> None:
        self.mib: float | None = None
        self._base: int | None = None

    def __enter__(self) -> PeakRSS:
        self.mib, self._base = None, status_kib("VmRSS")
        try:
            _CLEAR_REFS.write_text("5")  # the high-water mark restarts from the current resident set
        except OSError:
            self._base = None
        return self

    def __exit__(self, *exc: object) -> None:
        peak = status_kib("VmHWM")
        if self._base is not None and peak is not None:
            self.mib = max(0.0, (peak - self._base) / 1024)
