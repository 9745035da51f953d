"""``recognizers evaluate --task text``: the IAM-layout evaluation, with a writer profile, and the
writer-adaptation protocol (interfaces.md; writer-htr.md §5, §9.1).

* **plain** (:func:`evaluate_text`): every sample of the split, corpus-level CER and WER; with
  ``--writer-profile`` every image is decoded with that writer's adaptation.
* **protocol** (:func:`adaptation_protocol`, ``--adaptation-protocol``): per test writer with at least 2K
  words, ``--permutations`` (10) fixed seeded permutations (``data.episodes.evaluation_splits``); in each
  the first K = ``--shots`` (16) words adapt the model (:meth:`HandwritingRecognizer.adapt`, the model
  file's method) and all the others are the query words. Every model file (``--model``, then each
  ``--compare``) gives two rows on the identical query sets: its own weights, not adapted, and adapted.
  With a base, a MetaHTR and a writer-code model file that is §9.1's table: base model; meta-trained
  without the inner step (which separates "more training" from adaptation); the base model's classifier
  fine-tuned (the naive baseline); MetaHTR adapted; writer codes. CER and WER pool every query word of
  every split and writer (micro-average, §9.1); each adapted row also carries the mean and the largest
  time of one adaptation (one writer's K support words) and its peak memory (rise of the resident set);
  ``split_digest`` fingerprints the query sets so runs can be shown to match. ``--writers N`` keeps the
  first N writers by id and ``--limit N`` the first N query words of each split (all rows alike), to
  keep a run short.

Images go through the model's numeric pipeline as in training (``normalize_image``, no polarity guess).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import Recognizer

__all__ = ["adaptation_protocol", "decode_samples", "evaluate_text", "protocol_rows", "protocol_splits",
           "text_dataset"]

log = logging.getLogger(__name__)


def _text_split(args: Any) -> Path | None:
    """The split list to evaluate: ``--split``, else the corpus's Aachen test list if present, else None
    (every sample)."""
    if args.split:
        return Path(args.split)
    default = Path(args.data) / "splits" / "aachen" / "test.uttlist"
    return default if default.is_file() else None


def text_dataset(args: Any, min_words: int) -> tuple[Any, Any, str, Path | None]:
    """The samples ``evaluate --task text`` scores: ``(corpus, IAMDataset, level, split file or None)``.

    Args:
        args: the parsed ``evaluate`` options (``data``, ``level``, ``split``, ``split_kind``).
        min_words: writers with fewer words are left out (0 keeps every writer).
    """
    from data.datasets.iam import IAMDataset, read_iam

    corpus = read_iam(args.data)
    level = args.level or ("words" if corpus.words else "lines")
    split = _text_split(args)
    dataset = IAMDataset(corpus, level=level, split="test" if split else None,
                         split_files={"test": split} if split else None, split_kind=args.split_kind,
                         min_words=min_words)
    return corpus, dataset, level, split


def _text_recognizer(args: Any, load_recognizer: Any, model: str | None = None) -> Recognizer:
    from .batch import UsageError

    model = model or args.model or "text"
    rec = load_recognizer(model, args.device)
    if rec.task != "text":
        raise UsageError(f"evaluate --task text: {model} is a {rec.task} model")
    return rec


def decode_samples(rec: Any, dataset: Any, indices: Sequence[int], batch_size: int,
                   options: dict) -> tuple[list[str], list[str], float]:
    """Recognise the samples ``indices`` of an ``IAMDataset`` as ``evaluate --task text`` does.

    Images go through the model's numeric pipeline (``normalize_image``) in batches sorted by
    bounding-box area, after one untimed warm-up image.

    Returns:
        The references and hypotheses, in the order of ``indices``, and the seconds spent in
        ``recognize`` (not in file decoding).
    """
    from data.datasets.crohme import bucket_by_area
    from data.handwriting import normalize_image
    from recognizers.handwriting.recognizer import HandwritingImage

    from .batch import _timed

    records = dataset.corpus.words if dataset.level == "words" else dataset.corpus.lines
    boxes = [records[dataset.samples[i].id].box for i in indices]
    areas = [max(1, b.width) * max(1, b.height) for b in boxes]

    def image(i: int) -> HandwritingImage:
        grey = dataset[i][0].numpy()  # (H, W) uint8, kept for line splitting and Hinge codes
        return HandwritingImage(normalize_image(grey, rec.preprocess), grey)

    refs, hyps, seconds = [""] * len(indices), [""] * len(indices), 0.0
    rec.recognize([image(indices[0])], **options)  # warm-up: allocator and kernels ready
    for batch in bucket_by_area(areas, batch_size, max_area=2**62):
        results, elapsed = _timed(rec, [image(indices[j]) for j in batch], options)
        seconds += elapsed
        for j, result in zip(batch, results, strict=True):
            refs[j], hyps[j] = dataset.samples[indices[j]].text, result.text
    return refs, hyps, seconds


def evaluate_text(args: Any, load_recognizer: Any) -> dict:
    """IAM layout → corpus-level CER and WER of the decoded characters (writer-htr.md §9.1).

    Samples are those of ``IAMDataset`` (lines with ``err`` segmentation dropped at word level, 0-byte
    images skipped), without the writer filter: this scores the writer-independent base model (or, with
    ``--writer-profile``, one writer's adaptation of it). Images are recognised in batches sorted by
    bounding-box area (:func:`decode_samples`).
    """
    from training.metrics import cer, wer

    if getattr(args, "adaptation_protocol", False):
        return adaptation_protocol(args, load_recognizer)
    from .batch import spread_indices

    _, dataset, level, split = text_dataset(args, 0)
    chosen = spread_indices(len(dataset), args.limit)
    count = len(chosen)
    rec = _text_recognizer(args, load_recognizer)
    options: dict[str, Any] = {k: v for k, v in (("beam_size", args.beam_size),) if v is not None}
    if getattr(args, "writer_profile", None):
        options["writer_profile"] = rec.check_profile(args.writer_profile)
    split_lines = level == "lines" and not getattr(args, "whole_lines", False)
    if split_lines:
        options["lines"] = True  # a word model reads a line word by word
    refs, hyps, seconds = decode_samples(rec, dataset, chosen, args.batch_size, options)
    report = {"task": "text", "model": str(args.model or rec.name), "n": count,
              "metrics": {"cer": cer(refs, hyps).rate, "wer": wer(refs, hyps).rate},
              "seconds": round(seconds, 3), "seconds_per_image": round(seconds / count, 4),
              "beam_size": options.get("beam_size", 1), "level": level,
              "split": str(split) if split else None}
    if level == "lines":
        report["lines_read"] = "word by word" if split_lines else "whole"
    if "writer_profile" in options:
        profile = options["writer_profile"]
        report["writer_profile"] = {"path": str(args.writer_profile), "method": profile.method,
                                    "num_support": profile.num_support}
    if getattr(args, "per_writer", False):
        report["per_writer"] = per_writer_metrics([dataset.samples[i].writer for i in chosen], refs, hyps)
    return report


def per_writer_metrics(writers: Sequence[str], refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """``{writer id: {"n", "cer", "wer"}}`` in writer-id order, each pooled over that writer's items (the
    same measures as the corpus-level ones). On a synthetic corpus, ``writers.json`` names each writer's
    font, so this shows which hands a model reads badly."""
    from training.metrics import cer, wer

    groups: dict[str, tuple[list[str], list[str]]] = {}
    for writer, ref, hyp in zip(writers, refs, hyps, strict=True):
        own_refs, own_hyps = groups.setdefault(writer, ([], []))
        own_refs.append(ref)
        own_hyps.append(hyp)
    return {writer: {"n": len(r), "cer": cer(r, h).rate, "wer": wer(r, h).rate}
            for writer, (r, h) in sorted(groups.items())}


def _writer_words(dataset: Any, rec: Any, indices: list[int]) -> dict[int, Any]:
    """Normalised images (with their grey originals, for Hinge codes) of one writer's words."""
    from data.handwriting import normalize_image
    from recognizers.handwriting.recognizer import HandwritingImage

    words = {}
    for i in indices:
        pixels = dataset[i][0]
        words[i] = HandwritingImage(normalize_image(pixels, rec.preprocess), grey=pixels.numpy())
    return words


def _support(rec: Any, words: dict, texts: list[str], indices: tuple[int, ...]) -> list[tuple[Any, str]]:
    """The support pairs; characters the model cannot write are left out of the texts (logged), and a
    word left empty is skipped."""
    pairs = []
    for i in indices:
        unknown = rec.vocab.unknown(texts[i])
        text = "".join(c for c in texts[i] if c not in unknown)
        if unknown:
            log.warning("support word %r: characters %s are not in the model's vocabulary", texts[i], unknown)
        if text.strip():
            pairs.append((words[i], text))
    return pairs


def protocol_splits(args: Any) -> tuple[Any, list, str, Any, Any]:
    """The protocol's data: ``(dataset, splits, digest, level, split list)``: the evaluated words, the
    fixed support/query splits of the first ``--writers`` writers and their digest.

    ``args`` carries the ``evaluate`` options (``data``, ``level``, ``split``, ``shots``,
    ``permutations``, ``seed``, ``writers``).

    Raises:
        UsageError: no writer has enough words.
    """
    from data.episodes import evaluation_splits, split_digest

    from .batch import UsageError

    _, dataset, level, split = text_dataset(args, 2 * args.shots)
    splits = evaluation_splits(dataset.ids, dataset.writers, shots=args.shots,
                               num_permutations=args.permutations, seed=args.seed)
    writers = sorted({s.writer for s in splits})[: args.writers]
    splits = [s for s in splits if s.writer in writers]
    if not splits:
        raise UsageError(f"{args.data}: no writer with at least {2 * args.shots} {level} for the protocol")
    return dataset, splits, split_digest(splits, dataset.ids), level, split


# Row names of the §9.1 table by the adaptation method a model file carries.
_ROW_NAMES = {"finetune": ("base model, no adaptation", "base model, classifier fine-tuned"),
              "metahtr": ("meta-trained, not adapted", "MetaHTR adapted"),
              "writer-code": ("writer-code model, no code", "writer codes adapted")}


def _protocol_writer(args: Any, rec: Any, dataset: Any, splits: list, rows: dict, options: dict) -> None:
    """Adapt and decode every split of one writer; appends references, both rows' hypotheses, and the
    time and peak memory of every adaptation."""
    from .memory import PeakRSS

    texts = [s.text for s in dataset.samples]
    words = _writer_words(dataset, rec, sorted({i for s in splits for i in (*s.support, *s.query)}))
    start = time.perf_counter()
    own = dict(zip(words, rec.recognize(list(words.values()), **options), strict=True))
    rows["seconds"] += time.perf_counter() - start
    for s in splits:
        query = list(s.query[: args.limit])
        support = _support(rec, words, texts, s.support)
        rows["skipped"] += len(s.support) - len(support)
        start = time.perf_counter()
        with PeakRSS() as peak:
            profile = rec.adapt(support, steps=args.steps)
        rows["adapt_times"].append(time.perf_counter() - start)
        rows["adapt_peaks"].append(peak.mib)
        results = rec.recognize([words[i] for i in query], writer_profile=profile, **options)
        rows["seconds"] += time.perf_counter() - start
        rows["refs"] += [texts[i] for i in query]
        rows["plain"] += [own[i].text for i in query]
        rows["adapted"] += [r.text for r in results]


def protocol_rows(args: Any, rec: Any, dataset: Any, splits: list,
                  model: str) -> tuple[list[str], list, float]:
    """Both rows of one recognizer on the fixed splits: ``(references, [not adapted, adapted], seconds)``.

    ``rec`` is any handwriting recognizer, e.g. one built with another adapter by a benchmark; its
    adapter's method names the rows, and ``model`` is the name the rows carry.
    """
    from training.metrics import cer, wer

    options = {k: v for k, v in (("beam_size", args.beam_size),) if v is not None}
    rows: dict[str, Any] = {"refs": [], "plain": [], "adapted": [], "seconds": 0.0, "adapt_times": [],
                            "adapt_peaks": [], "skipped": 0}
    for writer in sorted({s.writer for s in splits}):
        _protocol_writer(args, rec, dataset, [s for s in splits if s.writer == writer], rows, options)
    refs, method = rows["refs"], rec.adapter.method
    names = _ROW_NAMES.get(method, ("no adaptation", f"adapted ({method})"))
    times, peaks = rows["adapt_times"], [p for p in rows["adapt_peaks"] if p is not None]
    table = [{"row": name, "model": model, "method": method, "cer": cer(refs, rows[key]).rate,
              "wer": wer(refs, rows[key]).rate}
             for name, key in zip(names, ("plain", "adapted"), strict=True)]
    table[1].update({"adapt_seconds_mean": round(sum(times) / len(times), 3),
                     "adapt_seconds_max": round(max(times), 3),
                     "adapt_peak_mib": round(max(peaks), 1) if peaks else None,
                     "support_words_skipped": rows["skipped"]})
    return refs, table, rows["seconds"]


def _markdown(rows: list[dict]) -> str:
    lines = ["| row | model | CER | WER | adaptation s per writer (mean / max) | adaptation peak MiB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        timing = (f"{r['adapt_seconds_mean']:.2f} / {r['adapt_seconds_max']:.2f}"
                  if "adapt_seconds_mean" in r else "")
        peak = r.get("adapt_peak_mib")
        lines.append(f"| {r['row']} | {Path(r['model']).name} | {100 * r['cer']:.2f} % "
                     f"| {100 * r['wer']:.2f} % | {timing} | {'' if peak is None else f'{peak:.0f}'} |")
    return "\n".join(lines)


def adaptation_protocol(args: Any, load_recognizer: Any) -> dict:
    """The writer-adaptation table of writer-htr.md §9.1 (module docstring) for ``--model`` and every
    ``--compare`` model file, all on the same query words. Returns the report; prints the table as
    Markdown on stderr.

    Raises:
        UsageError: no writer has enough words for the protocol, or a model is not a handwriting model.
    """
    dataset, splits, digest, level, split = protocol_splits(args)
    writers = sorted({s.writer for s in splits})
    print(f"adaptation protocol: {len(writers)} writers, {len(splits)} splits, split digest {digest}",
          file=sys.stderr)
    models = [args.model or "handwriting", *(getattr(args, "compare", None) or [])]
    table, seconds, refs = [], 0.0, []
    for model in models:
        rec = _text_recognizer(args, load_recognizer, model)
        refs, rows, model_seconds = protocol_rows(args, rec, dataset, splits, str(model))  # same refs
        table, seconds = table + rows, seconds + model_seconds
    print(_markdown(table), file=sys.stderr)
    first = table[:2]
    return {"task": "text", "model": str(models[0]), "models": [str(m) for m in models],
            "protocol": "writer-adaptation", "method": first[1]["method"], "n": len(refs), "rows": table,
            "metrics": {"cer": first[1]["cer"], "wer": first[1]["wer"], "cer_unadapted": first[0]["cer"],
                        "wer_unadapted": first[0]["wer"]},
            "writers": len(writers), "splits": len(splits), "shots": args.shots,
            "permutations": args.permutations, "seed": args.seed, "split_digest": digest,
            "steps": args.steps, "level": level, "split": str(split) if split else None,
            "beam_size": args.beam_size or 1, "seconds": round(seconds, 3)}
