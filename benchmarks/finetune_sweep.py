"""Plain fine-tuning of a handwriting model on a writer's support words, over a grid of settings.

    python benchmarks/finetune_sweep.py [--data corpora/text] [--model handwriting] [--permutations 2]
        [--limit 40] [--out report.json] SETTING [SETTING ...]   (--model: the plain base by default)

A SETTING is ``PREFIXES:LR:STEPS``: the parameter-name prefixes that adapt (comma-separated; empty =
every parameter), the fixed SGD rate and the number of full-batch steps, e.g. ``:1e-2:10`` (the whole
network, 10 steps at 1e-2) or ``decoder.classifier.:1e-3:10`` (the classifier only, the baseline row of
``--adaptation-protocol``). Each setting runs the writer-adaptation protocol of
``recognizers evaluate --task text --adaptation-protocol`` (the same fixed splits, split digest and
scoring: ``recognizers.text_eval``) with ``FinetuneAdapter(FinetuneConfig(...))`` in place of the model
file's own adapter, so the "no adaptation" row is the same for every setting.

It answers one question before meta-training: can a writer-independent model gain anything from 16 words
of a new hand, and which tensors and step sizes does it take? The answer sets MetaHTR's starting inner
rate (``training/configs/metahtr_synth.yaml``). Synthetic writers are fonts, not people
(writer-htr.md §12). A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _setting(spec: str):
    from recognizers.handwriting.adaptation import FinetuneConfig

    try:
        prefixes, lr, steps = spec.split(":")
        adapt = tuple(p for p in prefixes.split(",") if p)
        return FinetuneConfig(adapt=adapt, lr=float(lr), steps=int(steps))
    except ValueError as exc:
        raise SystemExit(f"finetune_sweep: bad setting {spec!r} (PREFIXES:LR:STEPS): {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="+", help="PREFIXES:LR:STEPS")
    p.add_argument("--data", default="corpora/text")
    p.add_argument("--model", default="recognizers/weights/handwriting-base.safetensors")
    p.add_argument("--permutations", type=int, default=2)
    p.add_argument("--limit", type=int, default=40, help="query words per split")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    configs = [_setting(s) for s in args.settings]  # refuse a bad setting before any work

    import torch

    import recognizers
    from recognizers.handwriting.adaptation import FinetuneAdapter
    from recognizers.text_eval import protocol_rows, protocol_splits

    torch.set_num_threads(args.threads)
    protocol = argparse.Namespace(data=args.data, level=None, split=None, split_kind="forms", shots=16,
                                  permutations=args.permutations, seed=0, writers=None, limit=args.limit,
                                  steps=None, beam_size=None, model=args.model, device="cpu")
    dataset, splits, digest, _, _ = protocol_splits(protocol)
    rec = recognizers.load(args.model, device="cpu")
    report = {"date": datetime.date.today().isoformat(), "model": args.model, "data": args.data,
              "splits": len(splits), "split_digest": digest, "limit": args.limit, "rows": []}
    for spec, cfg in zip(args.settings, configs, strict=True):
        rec.adapter = FinetuneAdapter(cfg)
        start = time.perf_counter()
        _, (plain, adapted), _ = protocol_rows(protocol, rec, dataset, splits, args.model)
        row = {"setting": spec, "cer_unadapted": plain["cer"], "wer_unadapted": plain["wer"],
               "cer": adapted["cer"], "wer": adapted["wer"],
               "adapt_seconds_mean": adapted["adapt_seconds_mean"], "seconds": time.perf_counter() - start}
        report["rows"].append(row)
        print(f"{spec:28s} CER {100 * row['cer_unadapted']:.2f} -> {100 * row['cer']:.2f} %  "
              f"WER {100 * row['wer_unadapted']:.2f} -> {100 * row['wer']:.2f} %  "
              f"{row['adapt_seconds_mean']:.2f} s/adaptation", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
