"""MetaHTR's validation on a few writers, without training: how well an inner-loop setting adapts.

    python benchmarks/metahtr_probe.py [--base recognizers/weights/handwriting-base.safetensors]
        [--ckpt RUN.ckpt] [--data corpora/text] [--writers 4] [--permutations 3] SETTING [SETTING ...]

A SETTING is ``STEPS:RATE`` (inner steps and the starting inner rate α of every tensor, e.g. ``5:4e-3``),
with ``:plain`` appended for the mean cross-entropy instead of instance weights. With ``--ckpt`` (a
``MetaHTRModule`` checkpoint) the checkpoint's learned rates and g_γ are kept and only the number of
steps is taken from the setting (write ``5:-``).

Each setting runs ``MetaHTRModule``'s validation (``Trainer(inference_mode=False).validate``) on the
first ``--writers`` validation writers by id with ``--permutations`` fixed splits each (support = 16
words, query = the rest) and prints ``val_wer`` / ``val_cer`` (adapted) against ``val_wer_unadapted`` /
``val_cer_unadapted`` (the same weights, not adapted). This is how the starting rate and step count of
``training/configs/metahtr_synth.yaml`` were chosen. A fresh g_γ is drawn after ``seed_everything(0)``.
Synthetic writers are fonts, not people (writer-htr.md §12). A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _module(args: argparse.Namespace, spec: str):
    from training.metahtr_module import MetaHTRModule

    steps, rate, *rest = spec.split(":")
    if args.ckpt:
        module = MetaHTRModule.load_from_checkpoint(args.ckpt, map_location="cpu")
        module.meta.cfg = dataclasses.replace(module.meta.cfg, num_inner_steps=int(steps))
        return module
    metahtr = {"num_inner_steps": int(steps), "initial_inner_lr": float(rate),
               "instance_weights": rest != ["plain"]}
    return MetaHTRModule(base=args.base, metahtr=metahtr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="+", help="STEPS:RATE[:plain]")
    p.add_argument("--base", default="recognizers/weights/handwriting-base.safetensors")
    p.add_argument("--ckpt", default=None, help="a MetaHTRModule checkpoint (keeps its rates and g_γ)")
    p.add_argument("--data", default="corpora/text")
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--permutations", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import lightning as L
    import torch

    from training.metahtr_data import EpisodeDataModule

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    for spec in args.settings:
        L.seed_everything(0, verbose=False)
        module = _module(args, spec)
        data = EpisodeDataModule(args.data, shots=16, num_permutations=args.permutations,
                                 val_writers=args.writers)
        trainer = L.Trainer(accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False)
        start = time.perf_counter()
        metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
        print(spec, json.dumps({k: round(float(v), 4) for k, v in metrics.items()}),
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
