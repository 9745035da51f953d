"""The batch runners behind ``recognizers transcribe`` and ``recognizers evaluate`` (interfaces.md,
platform.md §6).

transcribe: inputs are files, folders (``-r`` recurses), globs, ``@list.txt`` and ``-`` (a list on
stdin); the model loads once and files stream through it in batches; a bad file gets ``error`` set
and the run goes on; with ``--output-dir`` each result is written atomically under the input's path
relative to the inputs' common root, and inputs whose output exists are skipped unless
``--overwrite`` (so an interrupted run resumes). Exit status: 0 all ok, 1 any input failed.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import InputError, Recognizer
from .writers import render, write_atomic

__all__ = ["AUDIO_SUFFIXES", "IMAGE_SUFFIXES", "UsageError", "expand_inputs", "recognize_batch",
           "run_evaluate", "run_transcribe", "task_of"]

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({".flac", ".wav", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
_KNOWN = AUDIO_SUFFIXES | IMAGE_SUFFIXES


class UsageError(ValueError):
    """Bad command-line usage (exit status 2)."""


def _from_list(text: str, origin: str) -> list[str]:
    entries = [line.strip() for line in text.splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise UsageError(f"{origin}: the input list is empty")
    return entries


def _expand_one(spec: str, recursive: bool) -> list[Path]:
    path = Path(spec)
    if path.is_dir():
        found = path.rglob("*") if recursive else path.iterdir()
        return sorted(p for p in found if p.is_file() and p.suffix.lower() in _KNOWN)
    if path.exists():
        return [path]
    if glob.has_magic(spec):
        matches = sorted(Path(p) for p in glob.glob(spec, recursive=recursive) if Path(p).is_file())
        if not matches:
            raise UsageError(f"{spec}: the pattern matches no file")
        return matches
    return [path]  # a missing file is a per-file error (reported, the run goes on), not a usage error


def expand_inputs(specs: list[str], recursive: bool = False, stdin: Any = None) -> list[Path]:
    """Files to process, in order, without duplicates.

    Raises:
        UsageError: no inputs, an empty list file, or a glob that matches nothing.
    """
    out: list[Path] = []
    for spec in specs:
        if spec == "-":
            entries = _from_list((stdin or sys.stdin).read(), "stdin")
            out += [q for e in entries for q in _expand_one(e, recursive)]
        elif spec.startswith("@"):
            try:
                text = Path(spec[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"{spec[1:]}: cannot read the input list ({exc.strerror})") from exc
            out += [q for e in _from_list(text, spec[1:]) for q in _expand_one(e, recursive)]
        else:
            out += _expand_one(spec, recursive)
    if not out:
        raise UsageError("no input files (folders are searched for audio and image files; use -r to recurse)")
    return list(dict.fromkeys(out))


def task_of(path: Path, task: str) -> str:
    """The task of one input: ``task`` unless it is ``auto``; then by file type (audio → speech)."""
    if task != "auto":
        return task
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return "speech"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(f"{path}: an image may be math or handwriting: pass --task math or --task text")
    raise InputError(f"{path}: unknown file type {path.suffix!r} (pass --task)")


def _common_root(paths: list[Path]) -> Path:
    parents = [str(p.resolve().parent) for p in paths]
    return Path(os.path.commonpath(parents)) if parents else Path.cwd()


def _output_path(path: Path, root: Path, out_dir: Path, fmt: str) -> Path:
    """``a/x.png`` → ``OUT/a/x.png.<fmt>``: the full name is kept so x.png and x.jpg never collide."""
    rel = path.resolve().relative_to(root)
    return out_dir / rel.parent / f"{rel.name}.{fmt}"


def _finished(target: Path) -> bool:
    """An existing output counts as done, except a json/jsonl record of a failure: that input is retried."""
    if not target.is_file():
        return False
    if target.suffix in (".jsonl", ".json"):
        import json

        try:
            return json.loads(target.read_text(encoding="utf-8")).get("error") is None
        except (OSError, ValueError, AttributeError):
            return False
    return True


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def recognize_batch(rec: Recognizer, paths: list[Path], options: dict) -> list[dict]:
    """Records for one batch: inputs are loaded one by one (a bad one is isolated), recognised together;
    if the batch fails as a whole, each input is retried alone so only the culprit fails."""
    records, loaded = {}, {}
    for p in paths:
        try:
            loaded[p] = rec.load_input(p)
        except (InputError, OSError) as exc:
            records[p] = {"error": str(exc)}
    try:
        for p, result in zip(loaded, rec.recognize(list(loaded.values()), **options), strict=True):
            records[p] = result.to_dict()
    except Exception:
        for p, x in loaded.items():
            try:
                records[p] = rec.recognize([x], **options)[0].to_dict()
            except Exception as exc:
                records[p] = {"error": f"{p}: {type(exc).__name__}: {exc}"}
    base = {"text": None, "score": None, "nbest": [], "error": None}
    return [{"path": str(p), "task": rec.task, **base, **records[p]} for p in paths]


def _chunk_records(chunk: list[Path], args: Any, targets: dict, recognizer_for: Any, options: dict) -> list:
    """Records of one chunk of inputs in input order; None for an input skipped because its output
    exists. Inputs are grouped by task inside the chunk, each group recognised as one batch."""
    records: dict[Path, dict | None] = {}
    groups: dict[str, list[Path]] = {}
    for p in chunk:
        if targets[p] is not None and not args.overwrite and _finished(targets[p]):
            records[p] = None
            continue
        try:
            groups.setdefault(task_of(p, args.task) if not args.model else "model", []).append(p)
        except InputError as exc:
            records[p] = {"path": str(p), "task": None, "text": None, "score": None, "nbest": [],
                          "error": str(exc)}
    for task, todo in groups.items():
        records.update(zip(todo, recognize_batch(recognizer_for(task), todo, options), strict=True))
    return [records[p] for p in chunk]


def run_transcribe(args: Any, load_recognizer: Any) -> int:
    """Run ``recognizers transcribe`` with parsed ``args``; returns the exit status (0 or 1).

    Outputs follow the input order. Each task's model loads once, on first use.
    """
    from tqdm import tqdm

    paths = expand_inputs(args.inputs, args.recursive)
    root, out_dir = _common_root(paths), Path(args.output_dir) if args.output_dir else None
    targets = {p: _output_path(p, root, out_dir, args.format) if out_dir else None for p in paths}
    names = ("beam_size", "nbest", "num_groups", "diversity_penalty")
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    options.update(_profile_option(args))
    if getattr(args, "ctc_weight", None) is not None:
        _speech_only(args, "--ctc-weight")
        options["ctc_weight"] = args.ctc_weight
    if getattr(args, "lines", False):
        _text_only(args, "--lines")
        options["lines"] = True
    loaded: dict[str, Recognizer] = {}

    def recognizer_for(task: str) -> Recognizer:
        if task not in loaded:
            loaded[task] = load_recognizer(args.model or task, args.device)
            # a --model file decides the task; an explicit --task must agree with it
            if args.model and args.task not in ("auto", loaded[task].task):
                raise UsageError(f"--task {args.task}, but {args.model} is a {loaded[task].task} model")
            if "ctc_weight" in options and loaded[task].task != "speech":
                raise UsageError(f"--ctc-weight is for speech, but {args.model or task} is a "
                                 f"{loaded[task].task} model")
            if "lines" in options and loaded[task].task != "text":
                raise UsageError(f"--lines is for handwriting, but {args.model or task} is a "
                                 f"{loaded[task].task} model")
            if "writer_profile" in options:  # checked once, before any input: exit 2 if it does not fit
                if loaded[task].task != "text":
                    raise UsageError(f"--writer-profile is for handwriting, but {args.model or task} is a "
                                     f"{loaded[task].task} model")
                options["writer_profile"] = loaded[task].check_profile(options["writer_profile"])
        return loaded[task]

    failed, done, json_records = 0, 0, []
    with tqdm(total=len(paths), file=sys.stderr, disable=True if args.quiet else None, unit="file") as bar:
        for chunk in _batches(paths, args.batch_size):
            for p, record in zip(chunk, _chunk_records(chunk, args, targets, recognizer_for, options),
                                 strict=True):
                bad = 0 if record is None else _emit(record, args, targets[p], json_records)
                failed, done = failed + bad, done + (1 - bad)
                if bad and not args.quiet:
                    tqdm.write(f"error: {record['error']}", file=sys.stderr)
                bar.update(1)
    if json_records:
        sys.stdout.write(render_json_array(json_records))
    if not args.quiet:
        print(f"{done} ok, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _profile_option(args: Any) -> dict:
    """``{"writer_profile": profile}`` for ``--writer-profile FILE`` (read now, so a bad file is a usage
    error before any input), else ``{}``."""
    path = getattr(args, "writer_profile", None)
    if not path:
        return {}
    _text_only(args, "--writer-profile")
    from .handwriting.profile import WriterProfile

    return {"writer_profile": WriterProfile.load(path)}


def _speech_only(args: Any, flag: str) -> None:
    """A speech-only option needs ``--task speech`` or a ``--model`` (checked to be one on loading)."""
    if args.task not in ("speech", "auto") or (args.task == "auto" and not args.model):
        raise UsageError(f"{flag} is for speech: pass --task speech (or a speech --model)")


def _text_only(args: Any, flag: str) -> None:
    """A handwriting-only option needs ``--task text`` or a ``--model`` (checked to be one on loading)."""
    if args.task not in ("text", "auto") or (args.task == "auto" and not args.model):
        raise UsageError(f"{flag} is for handwriting: pass --task text (or a handwriting --model)")


def render_json_array(records: list[dict]) -> str:
    import json

    return json.dumps(records, ensure_ascii=False, indent=2) + "\n"


def _emit(record: dict, args: Any, target: Path | None, json_records: list) -> int:
    """Write one record (file, or stdout); returns 1 if it is an error, else 0."""
    if target is not None:
        if record["error"] is None or args.format in ("jsonl", "json"):
            write_atomic(target, render(record, args.format))
    elif args.format == "json":
        json_records.append(record)
    elif args.format == "jsonl" or record["error"] is None:
        sys.stdout.write(render(record, args.format))
        sys.stdout.flush()
    return 0 if record["error"] is None else 1


def spread_indices(total: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(total)``, all of them without a limit.

    ``evaluate --limit`` uses it: corpora are stored speaker by speaker (writer by writer), so the first
    N items would score one or two speakers; evenly spaced items keep every one represented, and the
    same arguments always pick the same items.
    """
    if not limit or limit >= total:
        return list(range(total))
    return [i * total // limit for i in range(limit)]


def _timed(rec: Recognizer, inputs: list, options: dict) -> tuple[list, float]:
    """``rec.recognize(inputs)`` and its wall time, the GPU synchronised before each clock reading
    (kernels run asynchronously) so the time covers all the work."""
    import torch

    cuda = getattr(getattr(rec, "device", None), "type", "cpu") == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = rec.recognize(inputs, **options)
    if cuda:
        torch.cuda.synchronize()
    return results, time.perf_counter() - start


def run_evaluate(args: Any, load_recognizer: Any) -> dict:
    """``recognizers evaluate``: recognise a labelled corpus and score it. Returns the report.

    Timing covers features, model and search (``recognize``), not model loading or file decoding;
    speech reports rtf = seconds / audio seconds, math seconds per image.
    """
    if getattr(args, "ctc_weight", None) is not None and args.task != "speech":
        raise UsageError(f"--ctc-weight is for speech, not --task {args.task}")
    if args.task == "math":
        return _evaluate_math(args, load_recognizer)
    if args.task == "text":
        from .text_eval import evaluate_text  # plain, --writer-profile and --adaptation-protocol

        return evaluate_text(args, load_recognizer)
    if args.task != "speech":
        raise UsageError(f"evaluate --task {args.task}: unknown task")
    return _evaluate_speech(args, load_recognizer)


def _evaluate_speech(args: Any, load_recognizer: Any) -> dict:
    """LibriSpeech layout → WER and CER of normalised transcripts."""
    from data.datasets.librispeech import scan_librispeech
    from training.metrics import cer, normalize_transcript, wer

    utts = scan_librispeech(args.data)
    utts = [utts[i] for i in spread_indices(len(utts), args.limit)]
    rec = load_recognizer(args.model or "speech", args.device)
    given = {"beam_size": args.beam_size, "ctc_weight": getattr(args, "ctc_weight", None)}
    options = {k: v for k, v in given.items() if v is not None}
    refs, hyps, seconds, audio = [], [], 0.0, 0.0
    rec.recognize([rec.load_input(utts[0].path)], **options)  # warm-up: kernels built, caches filled
    for chunk in _batches(utts, args.batch_size):
        waves = [rec.load_input(u.path) for u in chunk]
        results, elapsed = _timed(rec, waves, options)
        seconds += elapsed
        audio += sum(w.numel() for w in waves) / 16000
        refs += [normalize_transcript(u.transcript) for u in chunk]
        hyps += [normalize_transcript(r.text) for r in results]
    return {"task": "speech", "model": str(args.model or rec.name), "n": len(utts),
            "metrics": {"wer": wer(refs, hyps).rate, "cer": cer(refs, hyps).rate},
            "seconds": round(seconds, 3), "rtf": round(seconds / max(audio, 1e-9), 4),
            "audio_seconds": round(audio, 1),
            **{k: options.get(k, _default_option(rec, k)) for k in given}}


def _default_option(rec: Recognizer, name: str) -> Any:
    """The default of a ``recognize`` keyword: what a run without the option used."""
    import inspect

    return inspect.signature(rec.recognize).parameters[name].default


def _reference_tokens(tokens: tuple[str, ...]) -> list[str]:
    """A caption normalised like LaTeX input (``data.latex``); a caption it cannot parse is kept as is."""
    from data.latex import LatexError, tokenize_latex

    try:
        return list(tokenize_latex(" ".join(tokens), strict=False).tokens)
    except LatexError:
        return list(tokens)


def _evaluate_math(args: Any, load_recognizer: Any) -> dict:
    """CROHME layout (folder or zip) → ExpRate and the ≤1/≤2/≤3 token-distance rates (posformer.md §7).

    Images are normalised as in training (``CrohmeDataset``: polarity, ScaleToLimitRange; samples the
    reference drops are dropped with a logged warning) and recognised as they are, in area-sorted batches.
    """
    from data.datasets.crohme import CrohmeDataset, bucket_by_area
    from recognizers.posformer.recognizer import MathImage
    from training.metrics import expression_rate

    dataset = CrohmeDataset(args.data)
    chosen = spread_indices(len(dataset), args.limit)
    count = len(chosen)
    rec = load_recognizer(args.model or "math", args.device)
    options = {k: v for k, v in (("beam_size", args.beam_size),) if v is not None}
    refs, hyps, seconds = [None] * count, [None] * count, 0.0
    rec.recognize([MathImage(dataset[0][0])], **options)  # warm-up: allocator and kernels ready
    for batch in bucket_by_area([dataset.areas[i] for i in chosen], args.batch_size):
        results, elapsed = _timed(rec, [MathImage(dataset[chosen[j]][0]) for j in batch], options)
        seconds += elapsed
        for j, result in zip(batch, results, strict=True):
            refs[j], hyps[j] = _reference_tokens(dataset.samples[chosen[j]].tokens), result.text.split()
    rates = expression_rate(refs, hyps)
    return {"task": "math", "model": str(args.model or rec.name), "n": count,
            "metrics": {"exprate": rates.exprate, "le1": rates.le1, "le2": rates.le2, "le3": rates.le3},
            "seconds": round(seconds, 3), "seconds_per_image": round(seconds / count, 4),
            "beam_size": options.get("beam_size", _default_option(rec, "beam_size"))}
