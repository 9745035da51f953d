"""Time of one Samba-ASR training step on the CPU (forward, joint CTC/attention loss, backward, AdamW).

    python benchmarks/asr_train_step.py [--size cpu] [--batch 16] [--seconds 10] [--steps 8]
        [--threads 2] [--out benchmarks/out/asr_train_step.json]

The batch is random features shaped like ``training/configs/samba_asr_synth.yaml``'s (``max_batch_seconds``
160: 16 utterances of up to 10 s, lengths spread so the masks are exercised, 40 tokens), with SpecAugment,
dropout and the module's own loss (``SambaASRModule._losses``), so the step costs what a real one costs
minus data loading. Prints the median and the fastest of ``--steps`` timed steps after one warm-up step,
and the ten operators with the most self time in one profiled step. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="cpu", help="preset of recognizers.samba_asr.config")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="longest utterance")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "asr_train_step.json")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from training.speech_module import SambaASRModule

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = SambaASRModule(vocab_size=256, size=args.size)
    frames, tokens = int(args.seconds * 100), 40
    lengths = torch.linspace(frames, frames * 0.6, args.batch).long()
    token_lengths = torch.linspace(tokens, tokens * 0.6, args.batch).long()
    batch = {"feats": torch.randn(args.batch, 80, frames), "lengths": lengths,
             "tokens_in": torch.randint(3, 256, (args.batch, tokens)),
             "tokens_out": torch.randint(3, 256, (args.batch, tokens)), "token_lengths": token_lengths}
    optimizer = torch.optim.AdamW(module.parameters(), 1e-4)

    def step() -> None:
        loss, _, _ = module._losses(batch, augment=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]
    report = {"size": args.size, "batch": args.batch, "seconds": args.seconds, "threads": args.threads,
              "steps": args.steps, "median_s": statistics.median(times), "min_s": min(times),
              "top_ops_ms": {e.key: round(e.self_cpu_time_total / 1e3, 1) for e in top}}
    print(f"Samba-ASR '{args.size}' training step, {args.batch} x {args.seconds:g} s, "
          f"{args.threads} threads: median {report['median_s']:.3f} s, fastest {report['min_s']:.3f} s")
    for key, ms in report["top_ops_ms"].items():
        print(f"  {ms:8.1f} ms  {key}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
