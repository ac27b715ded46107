#!/usr/bin/env bash
# The GPU checklist: the same workloads (mlp, cnn, cnn in bf16) on a CUDA GPU and on the CPU
# of one machine, each device's weights tested on the other, compare, and doctor (the battery,
# and the operations of the cnn and vit workloads).
#   bash benchmarks/device_check.sh [OUTPUT_DIR]
# Writes the log, findings.json, report.md, the group plots and the sqlite store (mlflow.db,
# mlruns/) into OUTPUT_DIR (default: $OUT, else ./device-check). Synthetic data, so it runs
# offline.
set -uo pipefail
out=${1:-${OUT:-device-check}}
mkdir -p "$out"
work=$(mktemp -d)
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
common=(--dataset synthetic --data-dir "$work/data" --target-accuracy 0.9)
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  $py -m pipeline devices
  # The same workloads on the GPU and on the CPU: the quickstart's MLP, the conv net, bf16.
  for device in cuda cpu; do
    $py -m pipeline train --device $device "${common[@]}" --epochs 10 --run-name $device-mlp
    $py -m pipeline train --device $device "${common[@]}" --epochs 3 --model cnn --run-name $device-cnn
    $py -m pipeline train --device $device "${common[@]}" --epochs 3 --model cnn --precision bf16 --run-name $device-cnn-bf16
  done
  # The quickstart's DataLoader path, 3 epochs (its per-sample host work dominates).
  $py -m pipeline train --device cuda "${common[@]}" --epochs 3 --loader dataloader --run-name cuda-dataloader
  $py -m pipeline train --device cpu "${common[@]}" --epochs 3 --loader dataloader --run-name cpu-dataloader
  # Each device's weights evaluated on the other.
  for pair in cpu-mlp:cuda cuda-mlp:cpu cpu-cnn:cuda cuda-cnn:cpu; do
    run_id=$($py - "${pair%%:*}" <<'PY'
import sys
from mlflow import MlflowClient
name = sys.argv[1]
print(MlflowClient().search_runs(["0"], f"attributes.run_name = '{name}'")[0].info.run_id)
PY
)
    $py -m pipeline test --model-uri "runs:/$run_id/model" --device "${pair##*:}"
  done
  $py -m pipeline compare --output-json "$out/findings.json" --output-dir "$work/report"
  echo "compare exit code: $?"
  time $py -m pipeline doctor --device cuda --output-json "$out/doctor.json" --quiet
  echo "doctor exit code: $?"
  time $py -m pipeline doctor --device cuda --model cnn --output-json "$out/doctor-cnn.json" --quiet
  $py -m pipeline doctor --device cuda --model cnn --precision bf16 --output-json "$out/doctor-cnn-bf16.json" --quiet
  $py -m pipeline doctor --device cuda --model vit --precision tf32 --output-json "$out/doctor-vit-tf32.json" --quiet
} 2>&1 | tee "$out/log.txt"
cp "$work"/report/report.md "$work"/report/group-*.png "$work"/mlflow.db "$out"/ 2>/dev/null
cp -r "$work"/mlruns "$out"/ 2>/dev/null  # the artifacts, for `mlflow ui` on the store
ls "$out"
