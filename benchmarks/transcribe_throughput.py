"""Throughput of ``recognizers transcribe``: one file at a time against batches.

    python benchmarks/transcribe_throughput.py --task speech|math [--model NAME|PATH] [--data DIR]
        [--num 200] [--batch-sizes 1,16] [--threads 2] [--beam-size K] [--device cpu] [--repeats 1]
        [--json benchmarks/results/transcribe_throughput_<task>_<machine>_<date>.json]

The target (platform issue): with ``--batch-size 16`` on the 2-core machine, a folder of 200 short
utterances or formula images is at least 2x faster than one file at a time.

Every batch size runs the real command, ``recognizers.cli.main(["transcribe", "@LIST", "--output-dir",
FRESH_DIR, ...])``, in this process over the same N files; the output folder is new each time, so no
input is skipped as already done. The time is the whole command's wall time, model load included (what
a user waits for; the load alone is reported as ``load_seconds``). Before the timed runs of each batch
size, one untimed run over its first batch builds kernels and warms caches and the allocator.
Reported per batch size: seconds (median over --repeats), files/s, speed-up over the first batch size,
failed inputs, and how many texts agree with the first batch size's (batching must not change them).
Inputs: --data DIR (audio or image files, searched recursively, sorted, the first N); by default the
project's corpus (corpora/speech/test, corpora/math/test), else N items made by ``recognizers synth``.
A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the checkout's packages come first

from recognizers.batch import AUDIO_SUFFIXES, IMAGE_SUFFIXES  # noqa: E402  (after the path fix)
from recognizers.cli import main as recognizers_main  # noqa: E402

SUFFIXES = {"speech": AUDIO_SUFFIXES, "math": IMAGE_SUFFIXES}
DEFAULT_DATA = {"speech": ROOT / "corpora" / "speech" / "test", "math": ROOT / "corpora" / "math" / "test"}


class BenchError(Exception):
    """Nothing to measure with (no model, no inputs): a message for the user, exit status 2."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=tuple(SUFFIXES), required=True)
    p.add_argument("--model", default=None, help="registry name or model file (default: the task's "
                   "bundled model)")
    p.add_argument("--data", type=Path, default=None, help="folder of inputs (default: the project corpus "
                   "of the task, else synthesised ones)")
    p.add_argument("--num", type=int, default=200, help="number of inputs (the first N, sorted)")
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated; the first is the baseline")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--beam-size", type=int, default=None, help="default: the recognizer's own")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per batch size (median)")
    p.add_argument("--json", type=Path, default=None, help="write the report here as JSON")
    args = p.parse_args(argv)
    args.batch_sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    if not args.batch_sizes or min(args.batch_sizes) < 1 or args.num < 1 or args.repeats < 1:
        p.error("--batch-sizes, --num and --repeats must be positive")
    return args


def _model(task: str, model: str | None) -> str:
    """``--model`` as given, else the registry's model of ``task`` if its weights are installed."""
    if model is not None:
        return model
    from recognizers.registry import REGISTRY, weights_path

    name, spec = next((n, s) for n, s in REGISTRY.items() if s.task == task)
    if not weights_path(spec).is_file():
        raise BenchError(f"the bundled {task} model {name!r} is not installed ({weights_path(spec)} is "
                         "missing): pass --model FILE.safetensors|.ckpt, or set RECOGNIZERS_WEIGHTS_DIR")
    return name


def _synthesize(task: str, num: int, folder: Path) -> Path:
    """``recognizers synth TASK`` with every item in one split (only the files matter here)."""
    held = ["--test-fraction", "0"] + (["--dev-fraction", "0"] if task == "speech" else [])
    print(f"no --data and no {DEFAULT_DATA[task]}: synthesising {num} inputs", file=sys.stderr)
    code = recognizers_main(["synth", task, "--out", str(folder), "--num", str(num), "--seed", "0", *held])
    if code == 2:
        raise BenchError(f"recognizers synth {task} failed; pass --data DIR")
    return folder


def _inputs(task: str, data: Path | None, num: int, scratch: Path) -> tuple[Path, list[Path]]:
    """The folder used (``data`` or the default) and its first ``num`` input files, by sorted path."""
    if data is None:
        data = DEFAULT_DATA[task]
        if not data.is_dir():
            data = _synthesize(task, num, scratch / "synth")
    if not data.is_dir():
        raise BenchError(f"--data {data}: not a folder")
    files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES[task])
    if not files:
        raise BenchError(f"--data {data}: no {task} inputs ({', '.join(sorted(SUFFIXES[task]))})")
    if len(files) < num:
        print(f"only {len(files)} inputs under {data} (asked for {num})", file=sys.stderr)
    return data, files[:num]


def _transcribe(listing: Path, out_dir: Path, batch: int, args: argparse.Namespace, model: str) -> float:
    """One ``recognizers transcribe`` run (the command's own code path); returns its wall seconds."""
    command = ["transcribe", f"@{listing}", "--task", args.task, "--model", model, "--output-dir",
               str(out_dir), "--batch-size", str(batch), "--device", args.device, "-q"]
    if args.beam_size is not None:
        command += ["--beam-size", str(args.beam_size)]
    start = time.perf_counter()
    code = recognizers_main(command)
    seconds = time.perf_counter() - start
    if code == 2:
        raise BenchError(f"recognizers transcribe: usage error (exit 2) with {' '.join(command)}")
    return seconds


def _texts(out_dir: Path) -> dict[str, str | None]:
    """Relative output path → recognised text (None for a failed input)."""
    return {p.relative_to(out_dir).as_posix(): json.loads(p.read_text(encoding="utf-8"))["text"]
            for p in out_dir.rglob("*.jsonl")}


def _measure(files: list[Path], args: argparse.Namespace, model: str, scratch: Path) -> list[dict]:
    """One row per batch size: warm-up, timed runs, outputs compared with the first batch size's."""
    listing = scratch / "inputs.txt"
    listing.write_text("".join(f"{p.resolve()}\n" for p in files), encoding="utf-8")
    rows, baseline = [], None
    for batch in args.batch_sizes:
        warm = scratch / f"warm-{batch}.txt"
        warm.write_text("".join(f"{p.resolve()}\n" for p in files[:batch]), encoding="utf-8")
        _transcribe(warm, scratch / f"warm-{batch}", batch, args, model)
        times, texts = [], {}
        for k in range(args.repeats):
            out_dir = scratch / f"out-{batch}-{k}"
            times.append(_transcribe(listing, out_dir, batch, args, model))
            texts = _texts(out_dir)
            print(f"batch {batch}, run {k + 1}/{args.repeats}: {times[-1]:.2f} s", file=sys.stderr)
        baseline = texts if baseline is None else baseline
        seconds = statistics.median(times)
        rows.append({"batch_size": batch, "seconds": round(seconds, 3), "runs": [round(t, 3) for t in times],
                     "files_per_second": round(len(files) / seconds, 3),
                     "failed": sum(t is None for t in texts.values()) + len(files) - len(texts),
                     "same_text_as_first": sum(texts.get(k) == v for k, v in baseline.items())})
    for row in rows:
        row["speedup"] = round(rows[0]["seconds"] / row["seconds"], 3)
    return rows


def _load_seconds(model: str, device: str) -> float:
    import recognizers

    start = time.perf_counter()
    recognizers.load(model, device=None if device == "auto" else device)
    return round(time.perf_counter() - start, 3)


def _table(report: dict) -> str:
    lines = ["| batch size | seconds | files/s | speed-up | failed | same text as first |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r['seconds']:.2f} | {r['files_per_second']:.2f} | {r['speedup']:.2f}x "
              f"| {r['failed']} | {r['same_text_as_first']}/{report['num']} |" for r in report["rows"]]
    return "\n".join(lines)


def _environment(args: argparse.Namespace) -> dict:
    import torch

    return {"threads": torch.get_num_threads(), "device": args.device, "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="transcribe-bench-") as tmp:
        scratch = Path(tmp)
        try:
            model = _model(args.task, args.model)
            data, files = _inputs(args.task, args.data, args.num, scratch)
            report = {"task": args.task, "model": model, "data": str(data),
                      "num": len(files), "beam_size": args.beam_size, "repeats": args.repeats,
                      "load_seconds": _load_seconds(model, args.device), **_environment(args),
                      "rows": _measure(files, args, model, scratch)}
        except BenchError as exc:
            print(f"transcribe_throughput: error: {exc}", file=sys.stderr)
            return 2
    print(f"recognizers transcribe, {args.task}, {report['num']} inputs, model {model}, "
          f"{report['threads']} threads, {report['device']}; load {report['load_seconds']:.2f} s:\n")
    print(_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
