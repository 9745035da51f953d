"""PosFormer CPU latency per formula image, and the speed-up of cached over recomputed decoding.

    python benchmarks/math_latency.py [--model FILE.safetensors|FILE.ckpt] [--data corpora/math/test]
        [--num 100] [--typical] [--threads 2] [--beam-size 10] [--no-compare]
        [--out benchmarks/results/math_latency_<date>.json]

The targets (issue): on the 2-core machine, a typical formula image (about 100x400 px) is recognised with
beam 10 in both directions in at most 0.5 s, and cached decoding is at least 3x faster than recomputing
the decoder at every step, with the same outputs.

Images: the first ``--num`` captioned images of a CROHME-layout folder (``caption.txt`` + ``img/``, read
with ``data.datasets.crohme.scan_crohme``), in caption order. ``--typical`` keeps only those whose
*model input* (after the recognizer's preprocessing: crop to the strokes, resize into the limits) is
``--typical-height`` x ``--typical-width`` px, since that is what the model's work depends on. The size
distribution of the files and of the model inputs used is reported.

1. Latency: one image at a time through ``PosFormerRecognizer.recognize([path], beam_size=K)``, the
   normal path (file read, preprocessing, encoder, bidirectional beam search, reverse rescoring), after
   ``--warmup`` untimed calls; mean / median / p90 / total seconds and the mean output length in tokens.
2. Cached vs recompute: per image, the encoder runs once (its time is reported separately), then
   ``search.directional_search`` runs in both directions twice: with the model's cached incremental
   ``step`` (self-attention KV cache, running ARM coverage) and with :class:`RecomputingDecoder`, whose
   step teacher-forces the whole decoder over the full prefix and keeps its last position's logits (the
   reference's O(L^2) decoding, posformer.md §6 item 6). Timed: the two beam searches (encoder and the
   reverse rescoring excluded; the rescoring teacher-forces the pooled hypotheses and is the same code
   either way). Every hypothesis each direction keeps (K of them, what ``bidirectional_search`` pools)
   must have identical tokens and finished flags and scores within ``--tolerance``; the final output is
   a function of these, so they decide it. A mismatch count other than 0 is printed loudly and makes
   the exit status 1.

The JSON record (``--out``) holds the machine (CPU model, load), torch version, threads, the model file
and its sha256 prefix, the data folder, per-image numbers and the summary. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the checkout's packages come first

from data.datasets.crohme import CorpusError, MathSample, scan_crohme  # noqa: E402  (after the path fix)
from recognizers.base import InputError  # noqa: E402
from recognizers.decoding import Hypothesis  # noqa: E402
from recognizers.posformer.model import PosFormer  # noqa: E402
from recognizers.posformer.recognizer import PosFormerRecognizer  # noqa: E402
from recognizers.posformer.search import DIRECTIONS, directional_search, encode_images, search_options  # noqa: E402

DEFAULT_DATA = ROOT / "corpora" / "math" / "test"
LATENCY_TARGET_S = 0.5  # issue: seconds per typical image, beam 10 both directions, 2 threads
SPEEDUP_TARGET = 3.0  # issue: cached decoding over recomputing the decoder at every step


class BenchError(Exception):
    """Nothing to measure with (no model, no images): a message for the user, exit status 2."""


@dataclass(frozen=True)
class PrefixState:
    """What :class:`RecomputingDecoder` carries between steps: the rows' memory and every token so far.

    Attributes:
        memory: `(N, h, w, d)` encoder features, one row per hypothesis.
        memory_mask: `(N, h, w)` True on padding.
        prefix: `(N, t)` long, the tokens fed so far (start token first).
    """

    memory: Tensor
    memory_mask: Tensor
    prefix: Tensor

    def index_select(self, index: Tensor) -> PrefixState:
        """Select or duplicate hypotheses (beam search). Args: index `(N',)` long."""
        return PrefixState(self.memory.index_select(0, index), self.memory_mask.index_select(0, index),
                           self.prefix.index_select(0, index))


class RecomputingDecoder:
    """Stands in for a :class:`PosFormer` in ``search.directional_search``, decoding without any cache.

    Each ``step`` appends the tokens to the prefix and runs the full teacher-forced decoder
    (``PosFormer.score``: memory keys/values, self-attention and ARM coverage over all t positions) and
    keeps the last position's logits, so step t costs O(t) decoder positions instead of the cached one.
    In eval mode the logits equal the cached ``step``'s up to rounding (acceptance test C1).

    Args:
        model: the network, in eval mode.
    """

    def __init__(self, model: PosFormer) -> None:
        self.model = model
        self.cfg = model.cfg  # search reads pad_id and the positional table's size from it

    def start_token(self, direction: str) -> int:
        return self.model.start_token(direction)

    def stop_token(self, direction: str) -> int:
        return self.model.stop_token(direction)

    def init_state(self, memory: Tensor, memory_mask: Tensor, direction: str = "l2r") -> PrefixState:
        """Args: memory `(N, h, w, d)`, memory_mask `(N, h, w)`; the prefix starts empty."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        empty = torch.empty(memory.shape[0], 0, dtype=torch.long, device=memory.device)  # (N, 0)
        return PrefixState(memory, memory_mask.bool(), empty)

    def step(self, tokens: Tensor, state: PrefixState) -> tuple[Tensor, PrefixState]:
        """Args: tokens `(N,)` each row's last token. Returns logits `(N, V)` and the longer prefix."""
        prefix = torch.cat([state.prefix, tokens[:, None]], dim=1)  # (N, t + 1)
        logits = self.model.score(state.memory, state.memory_mask, prefix)[:, -1]  # (N, V)
        return logits, PrefixState(state.memory, state.memory_mask, prefix)


def compare_hypotheses(cached: list[Hypothesis], recomputed: list[Hypothesis], tol: float
                       ) -> tuple[list[str], float]:
    """Differences between two n-best lists of one image and direction.

    Returns:
        A message per difference (count, tokens, finished flag, |score difference| > ``tol``), and the
        largest score difference over the pairs (inf when the lists differ in length).
    """
    if len(cached) != len(recomputed):
        return [f"{len(cached)} cached hypotheses vs {len(recomputed)} recomputed"], float("inf")
    problems, worst = [], 0.0
    for k, (a, b) in enumerate(zip(cached, recomputed, strict=True)):
        diff = abs(a.score - b.score)
        worst = max(worst, diff)
        if a.tokens != b.tokens:
            problems.append(f"hypothesis {k}: tokens {a.tokens} vs {b.tokens}")
        elif a.finished != b.finished:
            problems.append(f"hypothesis {k}: finished {a.finished} vs {b.finished}")
        if not diff <= tol:  # also catches NaN
            problems.append(f"hypothesis {k}: score {a.score:.6f} vs {b.score:.6f}")
    return problems, worst


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="model file, .safetensors bundle or Lightning "
                   ".ckpt (default: the bundled posformer model)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CROHME-layout folder: caption.txt + "
                   "img/ (default: %(default)s)")
    p.add_argument("--num", type=int, default=100, help="images to measure (default: %(default)s)")
    p.add_argument("--typical", action="store_true", help="only images whose model input is within "
                   "--typical-height x --typical-width")
    p.add_argument("--typical-height", type=int, nargs=2, default=(60, 140), metavar=("MIN", "MAX"))
    p.add_argument("--typical-width", type=int, nargs=2, default=(300, 500), metavar=("MIN", "MAX"))
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--beam-size", type=int, default=10, help="beam per direction (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed images first (default: %(default)s)")
    p.add_argument("--no-compare", action="store_true", help="latency only, skip cached vs recompute")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest score difference between "
                   "cached and recomputed hypotheses (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON record here, e.g. "
                   "benchmarks/results/math_latency_<date>.json")
    args = p.parse_args(argv)
    if min(args.num, args.threads, args.beam_size) < 1 or args.warmup < 0:
        p.error("--num, --threads and --beam-size must be positive, --warmup not negative")
    return args


def _model_file(model: Path | None) -> Path:
    """``--model``, else the registry's posformer weights if they are installed."""
    if model is not None:
        if not model.is_file():
            raise BenchError(f"--model {model}: no such file")
        return model
    from recognizers.registry import REGISTRY, weights_path

    path = weights_path(REGISTRY["posformer"])
    if not path.is_file():
        raise BenchError(f"the bundled posformer model is not installed ({path} is missing): pass "
                         "--model FILE.safetensors|.ckpt, or set RECOGNIZERS_WEIGHTS_DIR")
    return path


def _load(path: Path) -> PosFormerRecognizer:
    import recognizers

    try:
        recognizer = recognizers.load(path, device="cpu")
    except ValueError as exc:  # CheckpointError included
        raise BenchError(f"cannot load {path}: {exc}") from exc
    if not isinstance(recognizer, PosFormerRecognizer):
        raise BenchError(f"{path} is a {type(recognizer).__name__} model, not PosFormer")
    return recognizer


def _select(recognizer: PosFormerRecognizer, args: argparse.Namespace
            ) -> list[tuple[MathSample, Tensor]]:
    """The first ``--num`` usable images (typical ones with ``--typical``) and their model inputs."""
    if not args.data.is_dir():
        raise BenchError(f"--data {args.data}: not a folder (a CROHME-layout folder: caption.txt + img/)")
    try:
        samples = scan_crohme(args.data)
    except CorpusError as exc:
        raise BenchError(str(exc)) from exc
    (h_lo, h_hi), (w_lo, w_hi) = args.typical_height, args.typical_width
    chosen = []
    for sample in samples:
        try:
            pixels = recognizer.load_input(Path(sample.image)).pixels  # (1, H, W)
        except InputError as exc:
            print(f"skipped {sample.name}: {exc}", file=sys.stderr)
            continue
        if args.typical and not (h_lo <= pixels.shape[1] <= h_hi and w_lo <= pixels.shape[2] <= w_hi):
            continue
        chosen.append((sample, pixels))
        if len(chosen) == args.num:
            break
    if not chosen:
        raise BenchError(f"--data {args.data}: no usable{' typical' if args.typical else ''} images")
    if len(chosen) < args.num:
        print(f"only {len(chosen)} images qualify under {args.data} (asked for {args.num})", file=sys.stderr)
    return chosen


def _latency(recognizer: PosFormerRecognizer, chosen: list[tuple[MathSample, Tensor]], beam: int,
             warmup: int) -> list[dict]:
    """Seconds and output tokens of ``recognize([path])`` per image, after ``warmup`` untimed calls."""
    for sample, _ in chosen[:warmup]:
        recognizer.recognize([Path(sample.image)], beam_size=beam)
    rows = []
    for sample, _ in chosen:
        start = time.perf_counter()
        (result,) = recognizer.recognize([Path(sample.image)], beam_size=beam)
        seconds = time.perf_counter() - start
        rows.append({"seconds": round(seconds, 4), "output_tokens": len(result.text.split()),
                     "text": result.text})
    return rows


def _searches(decoder: Any, memory: Tensor, mask: Tensor, beam: int) -> tuple[float, dict]:
    """Both directions' beam searches for one encoded image: seconds and hypotheses per direction."""
    options = search_options(beam, beam)  # nbest = K: every hypothesis bidirectional search pools
    start = time.perf_counter()
    hyps = {d: directional_search(decoder, memory, mask, d, options)[0] for d in DIRECTIONS}
    return time.perf_counter() - start, hyps


def _compare_one(model: PosFormer, pixels: Tensor, beam: int, tol: float) -> dict:
    """Encoder seconds, cached and recomputed search seconds, and their differences, for one image."""
    with torch.no_grad():
        start = time.perf_counter()
        memory, mask = encode_images(model, [pixels])  # (1, h, w, d), (1, h, w)
        encoder = time.perf_counter() - start
    cached_s, cached = _searches(model, memory, mask, beam)
    recompute_s, recomputed = _searches(RecomputingDecoder(model), memory, mask, beam)
    problems, worst = [], 0.0
    for d in DIRECTIONS:
        found, diff = compare_hypotheses(cached[d], recomputed[d], tol)
        problems += [f"{d} {p}" for p in found]
        worst = max(worst, diff)
    return {"encoder_seconds": round(encoder, 4), "cached_seconds": round(cached_s, 4),
            "recompute_seconds": round(recompute_s, 4), "speedup": round(recompute_s / cached_s, 3),
            "max_score_diff": worst, "mismatches": problems}


def _compare(model: PosFormer, chosen: list[tuple[MathSample, Tensor]], beam: int, warmup: int,
             tol: float) -> list[dict]:
    """:func:`_compare_one` per image; a mismatch is printed as soon as it is found."""
    for _, pixels in chosen[:min(warmup, 1)]:  # one untimed image warms both paths
        _compare_one(model, pixels, beam, tol)
    rows = []
    for k, (sample, pixels) in enumerate(chosen):
        rows.append(_compare_one(model, pixels, beam, tol))
        if rows[-1]["mismatches"]:
            print(f"MISMATCH {sample.name}: {'; '.join(rows[-1]['mismatches'][:3])}", file=sys.stderr)
        print(f"\rcached vs recompute {k + 1}/{len(chosen)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rows


def _spread(values: list[float]) -> dict:
    """mean / median / p90 / min / max / total of per-image seconds."""
    arr = np.asarray(values, dtype=float)
    return {"mean": round(float(arr.mean()), 4), "median": round(float(np.median(arr)), 4),
            "p90": round(float(np.percentile(arr, 90)), 4), "min": round(float(arr.min()), 4),
            "max": round(float(arr.max()), 4), "total": round(float(arr.sum()), 4)}


def _sizes(chosen: list[tuple[MathSample, Tensor]]) -> dict:
    """min / median / max height and width of the image files and of the model inputs."""
    def stats(values: list[int]) -> dict:
        return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}

    return {"file_height": stats([s.height for s, _ in chosen]),
            "file_width": stats([s.width for s, _ in chosen]),
            "input_height": stats([int(p.shape[1]) for _, p in chosen]),
            "input_width": stats([int(p.shape[2]) for _, p in chosen])}


def _summary(latency: list[dict], compare: list[dict] | None) -> dict:
    seconds = _spread([r["seconds"] for r in latency])
    tokens = float(np.mean([r["output_tokens"] for r in latency]))
    out: dict[str, Any] = {"latency_seconds": seconds, "mean_output_tokens": round(tokens, 2),
                           "latency_target_seconds": LATENCY_TARGET_S,
                           "mean_latency_within_target": seconds["mean"] <= LATENCY_TARGET_S}
    if compare:
        cached = sum(r["cached_seconds"] for r in compare)
        recompute = sum(r["recompute_seconds"] for r in compare)
        out.update({"encoder_seconds": _spread([r["encoder_seconds"] for r in compare]),
                    "cached_search_seconds": _spread([r["cached_seconds"] for r in compare]),
                    "recompute_search_seconds": _spread([r["recompute_seconds"] for r in compare]),
                    "search_speedup": round(recompute / cached, 3),
                    "speedup_target": SPEEDUP_TARGET,
                    "speedup_within_target": recompute / cached >= SPEEDUP_TARGET,
                    "mismatched_images": sum(bool(r["mismatches"]) for r in compare),
                    "max_score_diff": max(r["max_score_diff"] for r in compare)})
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environment(model_file: Path, model: PosFormer, args: argparse.Namespace) -> dict:
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "model_file": str(model_file), "model_sha256": digest[:16],
            "parameters": sum(p.numel() for p in model.parameters()), "data": str(args.data),
            "beam_size": args.beam_size, "typical": args.typical,
            "typical_height": list(args.typical_height), "typical_width": list(args.typical_width),
            "tolerance": args.tolerance}


def _print_report(report: dict) -> None:
    s, sizes = report["summary"], report["sizes"]
    lat, verdict = s["latency_seconds"], {True: "met", False: "NOT met"}
    print(f"PosFormer {report['model_file']} ({report['model_sha256']}), {report['num']} images from "
          f"{report['data']}, beam {report['beam_size']}, {report['threads']} threads, {report['cpu']}")
    print(f"model input H {sizes['input_height']}, W {sizes['input_width']}")
    print(f"latency per image (recognize, both directions + rescoring): mean {lat['mean']:.3f} s, median "
          f"{lat['median']:.3f} s, p90 {lat['p90']:.3f} s, total {lat['total']:.2f} s "
          f"(target mean <= {LATENCY_TARGET_S} s: {verdict[s['mean_latency_within_target']]}); "
          f"mean output {s['mean_output_tokens']} tokens")
    if "search_speedup" not in s:
        return
    cached, recompute = s["cached_search_seconds"]["mean"], s["recompute_search_seconds"]["mean"]
    print(f"beam searches per image, encoder excluded (mean {s['encoder_seconds']['mean']:.3f} s): cached "
          f"{cached:.3f} s, recompute {recompute:.3f} s, speed-up {s['search_speedup']:.3f}x (target "
          f"{SPEEDUP_TARGET}x: {verdict[s['speedup_within_target']]}); max score difference "
          f"{s['max_score_diff']:.2e}")
    if s["mismatched_images"]:
        print(f"!!! MISMATCH: cached and recomputed decoding differ on {s['mismatched_images']} images !!!")
    else:
        print("mismatches: 0 (identical hypotheses in both directions)")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    try:
        model_file = _model_file(args.model)
        recognizer = _load(model_file)
        chosen = _select(recognizer, args)
    except BenchError as exc:
        print(f"math_latency: error: {exc}", file=sys.stderr)
        return 2
    latency = _latency(recognizer, chosen, args.beam_size, args.warmup)
    compare = None if args.no_compare else _compare(recognizer.model, chosen, args.beam_size, args.warmup,
                                                    args.tolerance)
    images = [{"name": s.name, "file_hw": [s.height, s.width], "input_hw": list(p.shape[1:]), **latency[k],
               **(compare[k] if compare else {})} for k, (s, p) in enumerate(chosen)]
    report = {**_environment(model_file, recognizer.model, args), "num": len(chosen), "sizes": _sizes(chosen),
              "summary": _summary(latency, compare), "images": images}
    _print_report(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"JSON: {args.out}")
    return 1 if report["summary"].get("mismatched_images") else 0


if __name__ == "__main__":
    sys.exit(main())
