"""The handwriting recognizer against Tesseract on the same word and line images of an IAM-layout corpus.

    python benchmarks/tesseract_compare.py [--data corpora/text] [--level words lines] [--num 500]
        [--model FILE.safetensors|.ckpt] [--jobs 2] [--out report.json]

Samples: the split that ``recognizers evaluate --task text`` scores (``--split``, default
``DATA/splits/aachen/test.uttlist`` if present, else every sample; the same ``IAMDataset`` filters), of
which ``--num`` are taken evenly spaced in file order, so every writer of the split is represented and
the same arguments always give the same images. Both systems read exactly these image files.

* **ours**: decoded as ``recognizers evaluate --task text`` decodes (``text_eval.decode_samples``: the
  model's own image normalisation, area-sorted batches, one warm-up image; a line split at its word
  gaps and read word by word, ``recognize(lines=True)``); seconds are those spent in ``recognize``, with
  ``--jobs`` torch threads.
* **tesseract**: ``tesseract IMAGE stdout --psm 8`` (one word) or ``--psm 7`` (one line), ``--jobs``
  processes at a time, each with ``OMP_THREAD_LIMIT=1``; seconds are the wall time of the whole pool,
  process start and model load included (what one call per image costs). Its output's whitespace is
  collapsed (it ends every result with a newline); an image it fails on (exit status, timeout) counts
  as an empty output and is counted in ``failed``.

CER and WER are ``training.metrics`` corpus rates on the texts as they are, as ``recognizers evaluate``
scores them: case, punctuation and IAM's tokenisation count (IAM line texts are the words joined by
spaces, so ``red ?`` with a space before the mark, which a printed-text reader does not write).

Honesty (writer-htr.md §12): the default corpus is synthetic; its "writers" are handwriting fonts, not
people, so these numbers are not IAM numbers. Tesseract is a printed-text OCR (platform.md): it is a
reference point, not the state of the art of handwriting recognition.
A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the checkout's packages come first

DEBIAN_PACKAGES = ("tesseract-ocr", "tesseract-ocr-eng")
PSM = {"words": 8, "lines": 7}  # Tesseract page segmentation: 8 = a single word, 7 = a single text line
LEVELS = ("words", "lines")
TIMEOUT_S = 60.0  # per image: a word or line takes well under a second; a hang is a failure, not a stall


class BenchError(Exception):
    """Nothing to compare with (no tesseract, no model, no samples): a message, exit status 2."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "corpora" / "text",
                   help="IAM-layout corpus (default: corpora/text, made by `recognizers synth text`)")
    p.add_argument("--level", nargs="+", choices=LEVELS, default=list(LEVELS),
                   help="words and/or lines (default: both)")
    p.add_argument("--num", type=int, default=500, help="samples per level, evenly spaced (default 500)")
    p.add_argument("--split", default=None, help="split list (default: DATA/splits/aachen/test.uttlist if "
                   "present, else every sample)")
    p.add_argument("--split-kind", choices=("forms", "lines"), default="forms",
                   help="the list holds form ids (Aachen lists) or line ids (IAM task lists)")
    p.add_argument("--model", default=None, help="handwriting .safetensors bundle or Lightning .ckpt "
                   "(default: the bundled handwriting model)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--batch-size", type=int, default=16, help="our recognizer: images per forward pass")
    p.add_argument("--beam-size", type=int, default=None, help="our recognizer (default: its own)")
    p.add_argument("--jobs", type=int, default=2, help="Tesseract processes at a time, and torch threads "
                   "for our recognizer (the same CPU share for both; default 2)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON record here")
    args = p.parse_args(argv)
    if min(args.num, args.jobs, args.batch_size, args.beam_size or 1) < 1:
        p.error("--num, --jobs, --batch-size and --beam-size must be positive")
    args.level = [lvl for lvl in LEVELS if lvl in args.level]  # each once, words first
    return args


# ---- Tesseract ----


def tesseract_version() -> str:
    """First line of ``tesseract --version`` (e.g. ``tesseract 5.3.0``), once English is known installed.

    Raises:
        BenchError: no ``tesseract`` on PATH, or no ``eng`` language data, naming the Debian packages.
    """
    hint = f"install the Debian packages {' '.join(DEBIAN_PACKAGES)} (make system-deps)"
    binary = shutil.which("tesseract")
    if binary is None:
        raise BenchError(f"tesseract not found on PATH: {hint}")
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=TIMEOUT_S)
        langs = subprocess.run([binary, "--list-langs"], capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{binary} does not run ({exc}): {hint}") from exc
    # Tesseract 5 prints the language list on stdout, 4 on stderr: read both.
    if "eng" not in (langs.stdout + langs.stderr).split():
        raise BenchError(f"tesseract has no English model (eng.traineddata): {hint}")
    lines = (version.stdout or version.stderr).splitlines()
    return lines[0].strip() if lines else "tesseract (unknown version)"


def run_tesseract(image: Path, psm: int) -> str | None:
    """Tesseract's text for one image, whitespace collapsed; None when it fails on the image."""
    env = dict(os.environ, OMP_THREAD_LIMIT="1")  # one thread each: --jobs processes share the cores
    try:
        done = subprocess.run(["tesseract", str(image), "stdout", "--psm", str(psm)], capture_output=True,
                              env=env, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return " ".join(done.stdout.decode("utf-8", errors="replace").split())


def tesseract_texts(images: list[Path], psm: int, jobs: int) -> tuple[list[str], int, float]:
    """Tesseract over ``images``, ``jobs`` processes at a time: texts in input order (failures empty),
    the number of failures and the wall seconds (after one untimed warm-up call that pages the model in)."""
    run_tesseract(images[0], psm)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on the subprocesses
        outputs = list(pool.map(lambda image: run_tesseract(image, psm), images))
    seconds = time.perf_counter() - start
    return [text or "" for text in outputs], sum(text is None for text in outputs), seconds


# ---- our recognizer ----


def _model_file(model: str | None) -> tuple[str, Path]:
    """What ``recognizers.load`` takes and the file it reads: ``--model`` as given, else the bundled
    handwriting model.

    Raises:
        BenchError: the model file is missing.
    """
    from recognizers.registry import REGISTRY, weights_path

    if model is not None:
        if not Path(model).is_file():
            raise BenchError(f"--model {model}: no such file")
        return model, Path(model)
    name, spec = next((n, s) for n, s in REGISTRY.items() if s.task == "text")
    if not weights_path(spec).is_file():
        raise BenchError(f"the bundled handwriting model {name!r} is not installed ({weights_path(spec)} is "
                         "missing): pass --model FILE.safetensors|.ckpt, or set RECOGNIZERS_WEIGHTS_DIR")
    return name, weights_path(spec)


def sha256_prefix(path: Path, length: int = 12) -> str:
    """The first ``length`` hex digits of the file's SHA-256, to tell model files apart in records."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def load_model(args: argparse.Namespace) -> tuple[Any, dict]:
    """Our recognizer and its record (name, file, digest).

    Raises:
        BenchError: no model, an unreadable one, or one that is not a text model.
    """
    import recognizers
    from recognizers.checkpoint import CheckpointError

    name, path = _model_file(args.model)
    try:
        rec = recognizers.load(name, device=None if args.device == "auto" else args.device)
    except (CheckpointError, ValueError) as exc:
        raise BenchError(str(exc)) from exc
    if rec.task != "text":
        raise BenchError(f"{path}: a {rec.task} model, not a handwriting (text) model")
    return rec, {"name": rec.name, "file": str(path), "sha256": sha256_prefix(path)}


# ---- comparison ----


def compare_level(args: argparse.Namespace, rec: Any, level: str) -> dict:
    """Both systems on the same ``--num`` samples of one level: the level's record (rows, split)."""
    from recognizers.batch import spread_indices
    from recognizers.text_eval import decode_samples, text_dataset
    from training.metrics import cer, wer

    split_args = argparse.Namespace(data=args.data, level=level, split=args.split, split_kind=args.split_kind)
    _, dataset, _, split = text_dataset(split_args, 0)  # what `evaluate --task text` scores
    indices = spread_indices(len(dataset), args.num)
    options: dict[str, Any] = {"beam_size": args.beam_size} if args.beam_size is not None else {}
    if level == "lines":
        options["lines"] = True  # as `evaluate --level lines`: the word model reads a line word by word
    refs, ours, seconds = decode_samples(rec, dataset, indices, args.batch_size, options)
    theirs, failed, tess_seconds = tesseract_texts([dataset.samples[i].image for i in indices], PSM[level],
                                                   args.jobs)
    n = len(indices)

    def row(system: str, hyps: list[str], secs: float, **extra: Any) -> dict:
        return {"system": system, "samples": n, "cer": cer(refs, hyps).rate, "wer": wer(refs, hyps).rate,
                "seconds": round(secs, 3), "seconds_per_sample": round(secs / n, 4), **extra}

    ids = "\n".join(dataset.samples[i].id for i in indices)
    return {"split": str(split) if split else None, "split_samples": len(dataset), "samples": n,
            "ids_sha256": hashlib.sha256(ids.encode()).hexdigest()[:12],
            "rows": [row("ours", ours, seconds, beam_size=options.get("beam_size", 1),
                         lines_read="word by word" if options.get("lines") else "whole"),
                     row("tesseract", theirs, tess_seconds, failed=failed, psm=PSM[level])]}


def format_table(levels: dict[str, dict]) -> str:
    """One plain-text table: level, system, samples, CER, WER, seconds per sample, failures."""
    row = "{:<6} {:<10} {:>7} {:>7} {:>7} {:>9} {:>6}"
    lines = [row.format("level", "system", "samples", "CER", "WER", "s/sample", "failed")]
    for level, record in levels.items():
        for r in record["rows"]:
            lines.append(row.format(level, r["system"], r["samples"], f"{r['cer']:.4f}", f"{r['wer']:.4f}",
                                    f"{r['seconds_per_sample']:.4f}", r.get("failed", "-")))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    """The whole comparison: returns the JSON record (module docstring).

    Raises:
        BenchError: see :func:`tesseract_version` and :func:`load_model`.
        CorpusError: the corpus or split is unusable.
    """
    import torch

    version = tesseract_version()  # first: a missing tesseract should not cost a model load
    rec, model = load_model(args)
    levels = {level: compare_level(args, rec, level) for level in args.level}
    return {"benchmark": "tesseract_compare", "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": {"tesseract": version, "torch": torch.__version__, "python": sys.version.split()[0]},
            "model": model, "corpus": str(args.data), "split_kind": args.split_kind, "num": args.num,
            "jobs": args.jobs, "device": str(getattr(rec, "device", args.device)),
            "batch_size": args.batch_size, "levels": levels,
            "note": "synthetic writers are fonts; Tesseract is a printed-text OCR, a reference only"}


def main(argv: list[str] | None = None) -> int:
    """Parse, compare, print the table (stdout), write ``--out``. Exit status 0, or 2 on an error."""
    import torch

    from data.datasets.iam import CorpusError

    args = _parse(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.jobs)  # the CPU share Tesseract gets, so seconds compare
    try:
        report = run(args)
    except (BenchError, CorpusError) as exc:
        print(f"tesseract_compare: error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    print(format_table(report["levels"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
