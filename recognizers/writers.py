"""Output formats of ``recognizers transcribe`` and atomic file writes (platform.md §6).

Every format renders one input's record ``{"path", "task", "text", "score", "nbest", "error", ["words"]}``
to a string; ``json`` is one object per file (an array when several go to stdout). SRT and VTT need
word times (speech); TSV times are integer milliseconds, as in whisper's TSV.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "render", "write_atomic"]

Record = dict[str, Any]
_CUE_WORDS = 7  # words per subtitle cue
_CUE_SECONDS = 5.0  # longest cue


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(record: Record) -> list[tuple[float, float, str]]:
    """Group word timings into subtitle cues; one cue over the whole input when there are none."""
    words = record.get("words") or []
    if not words:
        return [(0.0, 0.0, record.get("text") or "")] if record.get("text") else []
    cues, current = [], []
    for w in words:
        if current and (len(current) >= _CUE_WORDS or w["end"] - current[0]["start"] > _CUE_SECONDS):
            cues.append(current)
            current = []
        current.append(w)
    cues.append(current)
    return [(c[0]["start"], c[-1]["end"], " ".join(w["word"] for w in c)) for c in cues]


def _srt(record: Record) -> str:
    return "".join(f"{i}\n{_timestamp(a, ',')} --> {_timestamp(b, ',')}\n{text}\n\n"
                   for i, (a, b, text) in enumerate(_cues(record), start=1))


def _vtt(record: Record) -> str:
    body = "".join(f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{text}\n\n"
                   for a, b, text in _cues(record))
    return "WEBVTT\n\n" + body


def _tsv(record: Record) -> str:
    words = record.get("words")
    if words:
        rows = [f"{round(w['start'] * 1000)}\t{round(w['end'] * 1000)}\t{w['word']}" for w in words]
        return "start\tend\ttext\n" + "\n".join(rows) + "\n"
    return f"{record['path']}\t{record.get('text') or ''}\t{record.get('error') or ''}\n"


def _tex(record: Record) -> str:
    return f"$${record.get('text') or ''}$$\n"


FORMATS: dict[str, Callable[[Record], str]] = {
    "jsonl": lambda r: json.dumps(r, ensure_ascii=False) + "\n",
    "json": lambda r: json.dumps(r, ensure_ascii=False, indent=2) + "\n",
    "txt": lambda r: (r.get("text") or "") + "\n",
    "tsv": _tsv,
    "srt": _srt,
    "vtt": _vtt,
    "tex": _tex,
}


def render(record: Record, fmt: str) -> str:
    """One input's output in format ``fmt`` (one of ``FORMATS``)."""
    return FORMATS[fmt](record)


def write_atomic(path: Path, text: str) -> None:
    """Write to ``<path>.part`` and rename, so a crash never leaves a half-written output that a
    resumed run would mistake for a finished one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:  # Ctrl-C (KeyboardInterrupt) or a full disk: no stray .part in the output folder
        tmp.unlink(missing_ok=True)
        raise
