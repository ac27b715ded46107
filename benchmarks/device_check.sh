#!/usr/bin/env bash
# The same workload on a CUDA GPU and on the CPU of one machine, then compare.
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
  $py -m pipeline train --device cuda "${common[@]}" --epochs 10 --run-name cuda-tensors
  $py -m pipeline train --device cpu "${common[@]}" --epochs 10 --run-name cpu-tensors
  # The quickstart's DataLoader path, 3 epochs (its per-sample host work dominates).
  $py -m pipeline train --device cuda "${common[@]}" --epochs 3 --loader dataloader --run-name cuda-dataloader
  $py -m pipeline train --device cpu "${common[@]}" --epochs 3 --loader dataloader --run-name cpu-dataloader
  cpu_run=$($py - <<'PY'
from mlflow import MlflowClient
c = MlflowClient()
exp = "0"  # Default: where runs go when none is named
print(c.search_runs([exp], "attributes.run_name = 'cpu-tensors'")[0].info.run_id)
PY
)
  $py -m pipeline test --model-uri "runs:/$cpu_run/model" --device cuda
  $py -m pipeline compare --output-json "$out/findings.json" --output-dir "$work/report"
  echo "compare exit code: $?"
} 2>&1 | tee "$out/log.txt"
cp "$work"/report/report.md "$work"/report/group-*.png "$work"/mlflow.db "$out"/ 2>/dev/null
cp -r "$work"/mlruns "$out"/ 2>/dev/null  # the artifacts, for `mlflow ui` on the store
ls "$out"
