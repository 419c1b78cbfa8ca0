#!/usr/bin/env bash
# All benchmarks, one command; the tables go to stdout and benchmarks/RESULTS.md.
#   benchmarks/run.sh                      # CPU: CNN on CIFAR-shaped synthetic data
#   benchmarks/run.sh --device cuda        # GPU: CIFAR-style ResNet with AMP (bf16 where supported)
#   PYTHON=/path/to/python benchmarks/run.sh   # use that interpreter as it is (it needs lightning for that row)
# Without PYTHON it makes .venv-bench from stacks/cpu/requirements.txt + benchmarks/requirements.txt
# (Lightning is a benchmark-only dependency). Extra arguments after -- go to train.py in every benchmark.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

device=cpu
repeats="${REPEATS:-5}"
extra=()
while (($#)); do
  case "$1" in
    --device) [[ $# -ge 2 ]] || { echo "benchmarks/run.sh: --device needs cpu or cuda" >&2; exit 2; }; device="$2"; shift ;;
    --) shift; extra+=("$@"); break ;;
    -h | --help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "benchmarks/run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  python=".venv-bench/bin/python"
  if [[ ! -x "$python" ]]; then
    echo "benchmarks/run.sh: creating .venv-bench (stacks/cpu + lightning)"
    python3 -m venv .venv-bench
    "$python" -m pip install --quiet --disable-pip-version-check -r stacks/cpu/requirements.txt \
      -r benchmarks/requirements.txt
  fi
fi

gpu_args=()
if [[ "$device" == cuda* ]]; then
  amp="$("$python" -c 'import torch; print("bf16" if torch.cuda.is_bf16_supported() else "fp16")')"
  gpu_args=(--amp "$amp" --channels-last)
fi
loop_args=(--device "$device")
[[ "$device" == cuda* ]] && loop_args+=(--model resnet "${gpu_args[@]}")
out="benchmarks/RESULTS.md"
{
  echo "## Benchmarks ($(date -u +%Y-%m-%d), \`benchmarks/run.sh --device $device\`)"
  echo
  "$python" benchmarks/loop_throughput.py --repeats "$repeats" --title "Loop throughput: CIFAR-shaped data" \
    -- "${loop_args[@]}" "${extra[@]}"
  echo
  # small steps: what a loop adds per step shows most here
  "$python" benchmarks/loop_throughput.py --repeats "$repeats" --steps 1000 --preset default \
    --title "Loop throughput: the default (digits, small CNN, batch 64)" \
    -- --device "$device" "${gpu_args[@]}" "${extra[@]}"
  echo
  "$python" benchmarks/whole_run.py --repeats "$(( repeats < 3 ? repeats : 3 ))" -- --device "$device" "${extra[@]}"
  echo
  "$python" benchmarks/checkpoint_stall.py --device "$device" --repeats "$repeats"
  echo
  "$python" benchmarks/data_throughput.py --device "$device" -- "${gpu_args[@]}" "${extra[@]}"
  echo
  "$python" benchmarks/folder_loading.py --repeats "$repeats"
  echo
  "$python" benchmarks/own_data_accuracy.py
  echo
  "$python" benchmarks/cpu_portable.py --repeats "$(( repeats < 3 ? repeats : 3 ))"
  echo
  "$python" benchmarks/sweep_overhead.py --repeats "$(( repeats < 3 ? repeats : 3 ))" -- --epochs 3
} | tee "$out"
echo
echo "benchmarks/run.sh: tables written to $out"
