#!/usr/bin/env bash
# The GPU checks in one command, a few minutes on one GPU: the CUDA tests (no host sync between logging steps,
# data on the device resumes exactly, the CUDA random numbers of augmentation match the CPU's) and the
# benchmarks with the speed-of-light, GPU-busy and whole-run rows. Uses the Python it finds as it is
# (PYTHON=...; it needs torch with CUDA, tensorboard, pyyaml and pytest; lightning adds its row).
#   benchmarks/gpu_check.sh              # tables to stdout and benchmarks/RESULTS.md
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
python="${PYTHON:-python3}"
if ! "$python" -c 'import torch, tensorboard, yaml, pytest' 2>/dev/null; then
  echo "benchmarks/gpu_check.sh: $python lacks torch, tensorboard, pyyaml or pytest; set PYTHON to one that has them" >&2
  exit 2
fi
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "benchmarks/gpu_check.sh: $python sees no CUDA GPU (torch.cuda.is_available() is false); run it on a GPU machine" >&2
  exit 2
fi
"$python" -m pytest -q -p no:cacheprovider tests/test_gpu.py "tests/test_recipes.py::test_random_numbers_are_uniform_and_device_independent"
REPEATS="${REPEATS:-3}" PYTHON="$python" benchmarks/run.sh --device cuda
