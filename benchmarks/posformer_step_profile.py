"""Where a PosFormer training step spends its time, per batch size (data loading, loss, backward, optimiser).

The bundled-model recipe (training/configs/posformer_synth.yaml) trained at about 0.24 s per batch of 64 on
an H100, far from what a 1.9 M-parameter model should need. This measures, on the device at hand:
loader throughput alone; the step split into teacher-forcing targets (CPU), forward + loss, backward and
optimiser; how the step time grows with the batch; and a torch.profiler table of the busiest operators.

    python benchmarks/posformer_step_profile.py --data corpora/math/train --batch-sizes 64,256 \
        --out benchmarks/results/posformer_step_profile.json

``--formats nchw,channels_last --precision bf16`` times the DenseNet in both memory orders on the same
batches (``PosFormerModule(channels_last=...)``); ``--no-table`` skips the profiler.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from recognizers.posformer.tree import bidirectional_targets
from training.math_data import MathDataModule
from training.math_module import PosFormerModule

RECIPE = Path(__file__).resolve().parents[1] / "training" / "configs" / "posformer_synth.yaml"


def build_module(device: torch.device, channels_last: bool = False) -> PosFormerModule:
    """The recipe's model and loss (its optimiser is replaced by AdamW 1e-3 here)."""
    args = dict(yaml.safe_load(RECIPE.read_text())["model"]["init_args"])
    for key in ("optimizer", "schedule", "warmup_steps", "val_max_tokens"):
        args.pop(key, None)
    torch.manual_seed(0)
    return PosFormerModule(**args, channels_last=channels_last).to(device).train()


def sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def batches(data: str, batch_size: int, workers: int, count: int) -> tuple[list[dict], float]:
    """``count`` training batches and the loader's batches per second (workers started, then timed)."""
    dm = MathDataModule(data, data, batch_size=batch_size, max_area=batch_size * 32_000, num_workers=workers)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    out = [next(it) for _ in range(3)]
    start = time.perf_counter()
    out += [next(it) for _ in range(count)]
    return out[3:], count / (time.perf_counter() - start)


def time_steps(module: PosFormerModule, data: list[dict], device: torch.device, bf16: bool = False
               ) -> dict[str, float]:
    """Mean seconds per step of each phase over ``data`` (after two warm-up steps); ``bf16``: autocast as
    Lightning's bf16-mixed does (forward and loss)."""
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    cfg = module.model.cfg
    totals = dict.fromkeys(("targets", "forward_loss", "backward", "optimizer", "step"), 0.0)
    for i, batch in enumerate(data):
        t0 = sync(device)
        labels = [module._labels(t, n) for t, n in zip(batch["tokens"], batch["names"], strict=True)]
        tf = bidirectional_targets(batch["ids"], labels, pad_id=cfg.pad_id, sos_id=cfg.sos_id,
                                   eos_id=cfg.eos_id, stop=module.hparams.position_stop)
        t1 = sync(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = module.compute_loss({**batch, "images": batch["images"].to(device),
                                        "mask": batch["mask"].to(device)})
        t2 = sync(device)
        loss.total.backward()
        t3 = sync(device)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = sync(device)
        if i >= 2:
            for key, value in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
                totals[key] += value
        del tf
    n = max(1, len(data) - 2)
    return {key: value / n for key, value in totals.items()}


def profile_table(module: PosFormerModule, data: list[dict], device: torch.device) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in data[:4]:
            loss = module.compute_loss({**batch, "images": batch["images"].to(device),
                                        "mask": batch["mask"].to(device)})
            loss.total.backward()
            sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return (prof.key_averages().table(sort_by=key, row_limit=25) + "\n"
            + prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="CROHME-layout training folder")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--formats", default="nchw", help="comma-separated: nchw, channels_last")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--no-table", action="store_true", help="skip the torch.profiler table")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    formats = args.formats.split(",")
    if not set(formats) <= {"nchw", "channels_last"}:
        parser.error(f"--formats takes nchw and channels_last, got {args.formats!r}")
    modules = {fmt: build_module(device, fmt == "channels_last") for fmt in formats}
    record: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "precision": args.precision,
                    "params": sum(p.numel() for p in modules[formats[0]].parameters()), "batch_sizes": {}}
    for size in (int(s) for s in args.batch_sizes.split(",")):
        data, loader_rate = batches(args.data, size, args.workers, args.steps)
        for fmt, module in modules.items():  # the same batches for every format
            phases = time_steps(module, data, device, bf16=args.precision == "bf16")
            key = str(size) if len(formats) == 1 else f"{size}/{fmt}"
            record["batch_sizes"][key] = {"loader_batches_per_s": loader_rate, **phases,
                                          "images_per_s": size / phases["step"]}
            print(key, json.dumps(record["batch_sizes"][key]), flush=True)
    if not args.no_table:
        print(profile_table(modules[formats[-1]], data, device), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
