#!/usr/bin/env bash
# Time-boxed training of the bundled PosFormer on one GPU: the model, loss and schedule of
# training/configs/posformer_synth.yaml, with bf16-mixed precision, a larger batch (256, lr 3e-3) and as
# many optimiser steps as fit in BUDGET seconds (the step is conv/batch-norm bound: bf16 and batch 256 gave
# about 3x the images per second of fp32 at batch 64 on an H100, benchmarks/RESULTS.md). A probe run first
# measures the step time on the card at hand; the real run's --trainer.max_steps is then chosen so that its cosine schedule ends inside the budget (a run stopped by
# max_time would end with the learning rate still high). The result is exported to safetensors.
# Usage: [PYTHON=python3] [OUT=dir] [ACCELERATOR=gpu] [WORKERS=12] [PROBE=150] [STEPS=N] [CONFIG=yaml]
#        [VAL_BATCHES=8]
#        training/gpu_train_posformer.sh TRAIN_DIR VAL_DIR BUDGET_S
#   TRAIN_DIR / VAL_DIR: CROHME-layout folders (caption.txt + img/), e.g. from `recognizers synth math`.
#   STEPS: skip the probe and train exactly N steps (a dry run on a CPU: ACCELERATOR=cpu STEPS=2
#   VAL_BATCHES=1 EXTRA="--trainer.precision 32-true" and a CONFIG whose "last" checkpoint is written every
#   step). A corpus too big to carry to a lent GPU machine: benchmarks/pack_math_corpus.py.
# The export takes checkpoints/last.ckpt, written every 250 steps: the probed step count is a multiple of it.
# benchmarks/posformer_gpu_session.sh wraps this script for one call of the device tool: a memory-order
# A/B instead of the probe (channels_last was 1.18x faster on an H200), STEPS from it, exports to OUT.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TRAIN=${1:?usage: gpu_train_posformer.sh TRAIN_DIR VAL_DIR BUDGET_S}
VAL=${2:?usage: gpu_train_posformer.sh TRAIN_DIR VAL_DIR BUDGET_S}
BUDGET=${3:?usage: gpu_train_posformer.sh TRAIN_DIR VAL_DIR BUDGET_S}
OUT=${OUT:-runs/posformer_gpu}
PY=${PYTHON:-python3}
start=$(date +%s)
common=(--config "${CONFIG:-training/configs/posformer_synth.yaml}"
  --trainer.accelerator "${ACCELERATOR:-gpu}" --trainer.devices 1 --trainer.enable_progress_bar false
  --trainer.max_epochs 100000  # max_steps decides; Lightning's step estimate takes the smaller of the two
  --data.init_args.train_dir "$TRAIN" --data.init_args.val_dir "$VAL" --data.init_args.test_dir "$VAL"
  --trainer.precision bf16-mixed
  --data.init_args.batch_size 256 --data.init_args.eval_batch_size 64 --data.init_args.max_area 8000000
  --data.init_args.num_workers "${WORKERS:-12}" --model.init_args.optimizer.init_args.lr 0.003)
# EXTRA: more overrides, e.g. "--trainer.precision 32-true --data.init_args.batch_size 64"
read -r -a extra <<< "${EXTRA:-}"
common+=("${extra[@]}")

steps=${STEPS:-}
if [[ -z "$steps" ]]; then
  # The probe keeps only the timer: no checkpoints, no validation.
  "$PY" -m recognizers fit "${common[@]}" --trainer.max_steps "${PROBE:-150}" --trainer.limit_val_batches 0 \
    --trainer.default_root_dir "$OUT/probe" --trainer.logger false \
    --trainer.callbacks=training.step_timer.StepTimer --trainer.callbacks.init_args.path "$OUT/probe/steps.json"
  cat "$OUT/probe/steps.json"
  # Left for training: the budget less what has passed, 60 s for start-up and export; 10 % for validation.
  steps=$("$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); left=$BUDGET-($(date +%s)-$start)-60; \
print(max(250, int(left / (1.10 * r['seconds_per_step'])) // 250 * 250))" "$OUT/probe/steps.json")
fi
echo "training for $steps steps ($(( $(date +%s) - start )) s spent so far)"
warmup=$(( steps / 10 < 500 ? steps / 10 : 500 ))
"$PY" -m recognizers fit "${common[@]}" --trainer.max_steps "$steps" --model.init_args.warmup_steps "$warmup" \
  --trainer.val_check_interval $(( steps / 5 > 0 ? steps / 5 : 1 )) --trainer.limit_val_batches "${VAL_BATCHES:-8}" \
  --trainer.default_root_dir "$OUT" --trainer.logger.init_args.save_dir "$OUT" \
  --trainer.callbacks+=training.step_timer.StepTimer --trainer.callbacks.init_args.path "$OUT/steps.json"
"$PY" -m recognizers export runs/posformer_synth/checkpoints/last.ckpt --out "$OUT/posformer.safetensors"
echo "done in $(( $(date +%s) - start )) s"
