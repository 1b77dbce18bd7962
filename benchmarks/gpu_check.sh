#!/usr/bin/env bash
# One-GPU check of biotransformer (benchmarks/gpu_check.py): bf16 training tokens/s and MFU of
# ESM-2 35M- and 150M-shaped models against HF ESM (sdpa), embedding throughput against
# fair-esm and HF, peak memory, and a one-GPU fine-tune smoke test; at most 8 minutes.
#
#   benchmarks/gpu_check.sh                      # on a GPU: writes benchmarks/results/gpu_check.json
#   benchmarks/gpu_check.sh --dry-run --out X.json   # every step at tiny shapes on the CPU
#
# Run from anywhere; extra arguments go to gpu_check.py. Commit the JSON of a real run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ " $* " != *" --dry-run "* ]]; then
  python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU: use --dry-run")'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec timeout 480 python -m benchmarks.gpu_check "$@"
