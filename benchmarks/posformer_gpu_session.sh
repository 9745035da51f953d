#!/usr/bin/env bash
# A lent GPU's PosFormer work in one call (the device tool allows one 10-minute command): unpack the
# carried corpus, time the DenseNet in both memory orders on the same batches
# (benchmarks/posformer_step_profile.py, bf16), then train the bundled-model recipe with the faster order
# for what is left of BUDGET_S (training/gpu_train_posformer.sh, its step count from the measured step
# time), and export the last and the best checkpoints. Everything worth keeping lands in OUT: the A/B
# JSON, the training metrics CSV, the step timer and the two .safetensors files.
# The training runs under `timeout`, so that an over-optimistic step count still leaves time to export
# the last checkpoint (written every 250 steps).
# Usage: OUT=dir [PYTHON=python3] [AB_BATCH=256] [AB_STEPS=8] [WORKERS=12] [STEPS=N] [INIT=model]
#        benchmarks/posformer_gpu_session.sh PACK.tgz BUDGET_S
#   INIT: continue from a trained model (init_from; e.g. recognizers/weights/posformer.safetensors, which
#   travels with the repository), so that successive GPU sessions add up.
#   PACK.tgz: .gpu_math/{train,test} from benchmarks/pack_math_corpus.py (see its docstring).
#   CPU dry run: ACCELERATOR=cpu AB_BATCH=4 AB_STEPS=3 WORKERS=1 STEPS=2 VAL_BATCHES=1
#   EXTRA="--trainer.precision 32-true --data.init_args.batch_size 4" (EXTRA is appended to the training's).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PACK=${1:?usage: posformer_gpu_session.sh PACK.tgz BUDGET_S}
BUDGET=${2:?usage: posformer_gpu_session.sh PACK.tgz BUDGET_S}
: "${OUT:?set OUT to the folder that receives the results}"
PY=${PYTHON:-python3}
RUN=runs/posformer_gpu
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
mkdir -p "$OUT"
tar -xzf "$PACK" || { echo "cannot unpack $PACK"; exit 1; }
device=$([[ "${ACCELERATOR:-gpu}" == cpu ]] && echo cpu || echo cuda)
"$PY" benchmarks/posformer_step_profile.py --data .gpu_math/train --batch-sizes "${AB_BATCH:-256}" \
  --steps "${AB_STEPS:-8}" --workers "${WORKERS:-12}" --device "$device" --formats nchw,channels_last \
  --precision bf16 --no-table --out "$OUT/step_ab.json" || { echo "step A/B failed"; exit 1; }
# The faster order, and its seconds per step. The A/B synchronises between phases, so it overstates the
# step of the Lightning loop (H200, 2026-11-27: 0.398 s vs 0.311 s); 1.25x that and 90 s in reserve left a
# third of the budget unused.
read -r order step_s < <("$PY" -c 'import json, sys
r = json.load(open(sys.argv[1]))["batch_sizes"]
t = {k.split("/")[1]: v["step"] for k, v in r.items()}
best = min(t, key=t.get)
print(best, t[best])' "$OUT/step_ab.json")
channels_last=$([[ "$order" == channels_last ]] && echo true || echo false)
# Left for training: the budget less what has passed, 60 s for start-up, validation and the exports.
steps=${STEPS:-$("$PY" -c "import sys; left = $BUDGET - $(elapsed) - 60
print(max(250, int(left / $step_s) // 250 * 250))")}
echo "A/B: $order faster ($step_s s per step); training $steps steps from $(elapsed) s"
init=${INIT:+--model.init_args.init_from $INIT}
STEPS=$steps OUT=$RUN EXTRA="--model.init_args.channels_last $channels_last $init ${EXTRA:-}" \
  timeout $(( BUDGET - $(elapsed) - 30 )) training/gpu_train_posformer.sh .gpu_math/train .gpu_math/test "$BUDGET"
status=$?
echo "training ended with status $status at $(elapsed) s"
ckpts=runs/posformer_synth/checkpoints  # the recipe's fixed dirpath
best=$(ls "$ckpts"/step*-exprate*.ckpt 2>/dev/null | "$PY" -c 'import re, sys
paths = sys.stdin.read().split()
print(max(paths, key=lambda p: float(re.search(r"exprate([0-9.]+)\.ckpt$", p).group(1))) if paths else "")')
# A run that finished exported last.ckpt itself; one stopped by the timeout did not.
if [[ $status == 0 && -f "$RUN/posformer.safetensors" ]]; then
  cp "$RUN/posformer.safetensors" "$OUT/posformer_last.safetensors"
else
  "$PY" -m recognizers export "$ckpts/last.ckpt" --out "$OUT/posformer_last.safetensors"
fi
[[ -n "$best" ]] && "$PY" -m recognizers export "$best" --out "$OUT/posformer_best.safetensors" \
  && basename "$best" > "$OUT/best.txt"
find "$RUN" -name metrics.csv -exec cp {} "$OUT/metrics.csv" \;
cp "$RUN/steps.json" "$OUT/" 2>/dev/null
echo "done in $(elapsed) s"
