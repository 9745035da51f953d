#!/usr/bin/env bash
# GPU check of the Triton selective scan (samba-asr.md §7.6, §13.4): parity vs the float64 oracle,
# timings vs the chunked PyTorch scan, one JSON report. Needs only torch, triton and this repository.
# Usage: [OUT=dir] [PYTHON=python] benchmarks/gpu_check.sh [gpu_check.py flags, e.g. --no-sweep]
# Exit status: non-zero on any parity failure; the JSON is written in every case.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The project's venv when there is one (a development checkout), else the machine's Python (a GPU
# machine with torch and triton preinstalled).
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY="$(command -v python || command -v python3)"; fi
"$PY" benchmarks/gpu_check.py --out "${OUT:-benchmarks/out}/gpu_check.json" "$@"
