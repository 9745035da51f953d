#!/usr/bin/env bash
# GPU check of the Samba-ASR LibriSpeech recipe: (1) `recognizers fit` with
# training/configs/samba_asr_librispeech.yaml on a small LibriSpeech-layout corpus (only the data paths,
# the vocabulary size and the step count changed), which runs the DataModule, LightningCLI, the DDP
# strategy, bf16-mixed and checkpointing on the GPU; (2) benchmarks/asr_gpu_check.py timings.
# Usage: [OUT=dir] [PYTHON=python3] benchmarks/asr_gpu_check.sh CORPUS   (CORPUS holds train/ and dev/)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CORPUS=${1:?usage: asr_gpu_check.sh CORPUS}
OUT=${OUT:-benchmarks/out}
PY=${PYTHON:-python3}
start=$(date +%s)
"$PY" -m recognizers fit --config training/configs/samba_asr_librispeech.yaml \
  --data.init_args.train_dir "$CORPUS/train" --data.init_args.val_dir "$CORPUS/dev" \
  --data.init_args.test_dir "$CORPUS/dev" --data.init_args.vocab_size 200 --data.init_args.num_workers 4 \
  --data.init_args.max_batch_seconds 600 --trainer.devices 1 --trainer.max_steps 30 \
  --trainer.val_check_interval 15 --trainer.check_val_every_n_epoch null --trainer.limit_val_batches 2 --model.init_args.warmup_steps 10 \
  --trainer.default_root_dir "$OUT/asr_fit" --trainer.logger.init_args.save_dir "$OUT/asr_fit"
echo "fit: $(( $(date +%s) - start )) s; checkpoints:"; find "$OUT/asr_fit" -name "*.ckpt"
"$PY" benchmarks/asr_gpu_check.py --out "$OUT/asr_gpu_check.json"
