"""GPU check of the Samba-ASR LibriSpeech recipe's model ("large" preset) on one CUDA device.

Times, with bf16 autocast as the recipe trains (``precision: bf16-mixed``), one optimiser step of the
joint CTC/attention loss for a batch shaped like the recipe's (``--utts`` utterances of ``--seconds``
seconds, ``--tokens`` tokens each, V = 5000), and the decoder's recurrent step during beam search.
Writes one JSON file and prints it. The full pipeline (DataModule, LightningCLI, DDP strategy, bf16,
checkpointing) is exercised separately by ``benchmarks/asr_gpu_check.sh`` through ``recognizers fit``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recognizers import decoding
from recognizers.samba_asr.config import preset
from recognizers.samba_asr.model import SambaASR


def _timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` after two warm-up calls (CUDA synchronised)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_seconds(model: SambaASR, args) -> float:
    frames, vocab = int(args.seconds * 100), model.cfg.vocab_size
    feats = torch.randn(args.utts, 80, frames, device="cuda")
    lengths = torch.full((args.utts,), frames, device="cuda")
    tokens = torch.randint(3, vocab, (args.utts, args.tokens), device="cuda")
    tok_lengths = torch.full((args.utts,), args.tokens, device="cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ctc, enc_lengths, logits = model(feats, lengths, tokens, tok_lengths)
            ce = F.cross_entropy(logits.float().transpose(1, 2), tokens, label_smoothing=0.1)
            ctc_loss = F.ctc_loss(ctc.transpose(0, 1), tokens, enc_lengths, tok_lengths, zero_infinity=True)
            loss = 0.3 * ctc_loss + 0.7 * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _timed(step, args.repeats)


@torch.no_grad()
def decode_seconds(model: SambaASR, args, beam: int) -> float:
    """One batch of ``args.utts`` inputs decoded for exactly ``args.tokens`` steps (an untrained model
    never ends early, so the token count is fixed): seconds per batch."""
    frames = int(args.seconds * 100)
    feats = torch.randn(args.utts, 80, frames, device="cuda")
    lengths = torch.full((args.utts,), frames, device="cuda")
    options = decoding.DecodingOptions(beam_size=beam, max_length=args.tokens,
                                       ctc_weight=0.3 if beam > 1 else 0.0)

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            encoded, enc_lengths = model.encode(feats, lengths)
            ctc = model.ctc_log_probs(encoded)
            scorer = decoding.CTCPrefixScorer(ctc, enc_lengths, 0, 2) if beam > 1 else None
            state = model.init_state(encoded, enc_lengths)
            decoding.search(model.step, state, lambda s, i: s.index_select(i), batch_size=args.utts,
                            sos_id=1, eos_id=2, options=options, lengths=enc_lengths, ctc=scorer,
                            device="cuda")

    return _timed(run, max(2, args.repeats // 3))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/out/asr_gpu_check.json")
    p.add_argument("--utts", type=int, default=64)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--tokens", type=int, default=60)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = SambaASR(preset("large", 5000)).cuda().train()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "params_m": round(sum(q.numel() for q in model.parameters()) / 1e6, 1),
              "batch": {"utts": args.utts, "seconds": args.seconds, "tokens": args.tokens}}
    step = train_step_seconds(model, args)
    report["train_step_s"] = round(step, 4)
    report["train_audio_s_per_s"] = round(args.utts * args.seconds / step, 1)
    report["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    model.eval()
    for beam in (1, 4):
        seconds = decode_seconds(model, args, beam)
        report[f"decode_beam{beam}_s"] = round(seconds, 4)
        report[f"decode_beam{beam}_rtf"] = round(seconds / (args.utts * args.seconds), 5)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
