#!/usr/bin/env bash
# The GPU checklist: the mlp and cnn workloads in fp32, tf32, bf16 and fp16 on a CUDA GPU and
# on the CPU of the same machine, each device's weights tested on the other, compare, doctor
# (the battery, and the operations of cnn and vit), then a one-screen summary.
#   bash benchmarks/device_check.sh [OUTPUT_DIR]
# Writes log.txt, summary.txt, findings.json, report.md, the plots, doctor*.json and the
# sqlite store (mlflow.db, mlruns/) into OUTPUT_DIR (default: $OUT, else ./device-check).
# Synthetic data, so it runs offline. Without CUDA the GPU legs are skipped with a line that
# says so and the CPU legs run on smaller sizes, so the script is known to work before a GPU
# is lent. It must finish within 10 minutes on one H100-class machine (an estimate of about
# 6 has not been measured yet); on this repository's 2-core CPU, CPU legs only, about 7.
set -uo pipefail
out=${1:-${OUT:-device-check}}
mkdir -p "$out"
work=$(mktemp -d)
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

if $py -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  gpu=cuda
  mlp=(--train-size 60000 --test-size 10000 --epochs 5)
  cnn=(--train-size 10000 --test-size 2000 --epochs 3)
else
  gpu=""
  mlp=(--train-size 6000 --test-size 1000 --epochs 2)
  cnn=(--train-size 1000 --test-size 500 --epochs 2)
fi
common=(--dataset synthetic --data-dir "$work/data" --quiet)

run_id() {  # the id of the run with this name
  $py - "$1" <<'PY'
import sys
from mlflow import MlflowClient
print(MlflowClient().search_runs(["0"], f"attributes.run_name = '{sys.argv[1]}'")[0].info.run_id)
PY
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  $py -m pipeline devices
  [ -z "$gpu" ] && echo "no CUDA device here: the GPU legs are skipped, the CPU legs run on small sizes"
  for model in mlp cnn; do
    if [ $model = mlp ]; then sizes=("${mlp[@]}"); else sizes=("${cnn[@]}"); fi
    for precision in fp32 tf32 bf16 fp16; do
      for device in $gpu cpu; do
        if [ "$precision" = tf32 ] && [ "$device" = cpu ]; then
          echo "skipped: $model tf32 on the CPU (TF32 is a CUDA precision)"
          continue
        fi
        $py -m pipeline train --device $device --model $model --precision $precision \
          "${common[@]}" "${sizes[@]}" --run-name $device-$model-$precision
        echo "train $device $model $precision: exit code $?"
      done
    done
  done
  # Each device's fp32 weights evaluated on the other (on a CPU-only machine: on the CPU).
  for model in mlp cnn; do
    for pair in "cpu:${gpu:-cpu}" ${gpu:+"$gpu:cpu"}; do
      from=${pair%%:*} on=${pair##*:}
      $py -m pipeline test --model-uri "runs:/$(run_id "$from-$model-fp32")/model" --device "$on" --quiet
      echo "test $model trained on $from, evaluated on $on: exit code $?"
    done
  done
  $py -m pipeline compare --output-json "$out/findings.json" --output-dir "$work/report" --quiet
  echo "compare exit code: $?"
  doctor_device=${gpu:-cpu}
  $py -m pipeline doctor --device $doctor_device --output-json "$out/doctor.json" --quiet
  echo "doctor exit code: $?"
  $py -m pipeline doctor --device $doctor_device --model cnn --output-json "$out/doctor-cnn.json" --quiet
  $py -m pipeline doctor --device $doctor_device --model cnn --precision bf16 --output-json "$out/doctor-cnn-bf16.json" --quiet
  if [ -n "$gpu" ]; then
    $py -m pipeline doctor --device $gpu --model vit --precision tf32 --output-json "$out/doctor-vit-tf32.json" --quiet
  fi
} 2>&1 | tee "$out/log.txt"

# One screen: what each run recorded of its precision, how fast and how right it was.
$py - <<'PY' | tee "$out/summary.txt"
from mlflow import MlflowClient

runs = MlflowClient().search_runs(["0"], max_results=200, order_by=["attributes.start_time ASC"])
print(f"{'run':24} {'status':8} {'matmul':6} {'conv':6} {'override':9} {'samples/s':>10} {'acc':>6} {'parity':>7} {'inputs':>7}  flags")
for r in runs:
    t, m = r.data.tags, r.data.metrics
    if t.get("pipeline.stage") not in ("train", "test"):
        continue
    def num(key, fmt):
        return format(m[key], fmt) if key in m else "-"
    print(
        f"{r.info.run_name[:24]:24} {r.info.status[:8]:8} {t.get('pipeline.fp32_matmul', '-'):6} "
        f"{t.get('pipeline.fp32_conv', '-'):6} {t.get('pipeline.tf32_override', '-')[:9]:9} "
        f"{num('samples_per_s', ',.0f'):>10} {num('test_accuracy', '.1%'):>6} "
        f"{num('parity_argmax_agreement', '.1%'):>7} {num('parity_input_mismatch', '.2%'):>7}  "
        f"{t.get('pipeline.flags', '')}"
    )
for r in runs:
    if r.data.tags.get("pipeline.stage") == "doctor":
        print(r.info.run_name, r.data.params.get("model", ""), r.data.params.get("precision", ""),
              "->", r.data.tags.get("mlflow.note.content", "")[:160])
PY
cp "$work"/report/report.md "$work"/report/group-*.png "$work"/mlflow.db "$out"/ 2>/dev/null
cp -r "$work"/mlruns "$out"/ 2>/dev/null  # the artifacts, for `mlflow ui` on the store
ls "$out"
