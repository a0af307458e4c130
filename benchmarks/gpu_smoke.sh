#!/usr/bin/env bash
# GPU smoke check, for a machine with at least one CUDA GPU (run from the repository root):
#   1. model throughput at the paper's CIFAR presets (batch 16, 32x32): fp32 eager, bf16
#      autocast, the per-step reference layers and torch.compile, against a fp32 matmul ceiling;
#   2. a DDP training smoke run with NCCL: one Ray Train worker per GPU, bf16 autocast, logged to
#      a throwaway MLflow store, then evaluated from its best checkpoint.
# Output goes to stdout and to ${OUT:-gpu_smoke_out}/; copy the figures into benchmarks/RESULTS.md.
set -euo pipefail
OUT="${OUT:-gpu_smoke_out}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
PIXELRNN="${PIXELRNN:-.venv/bin/pixelrnn}"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then
  echo "gpu_smoke: no CUDA GPU visible to torch" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.csv"

echo "== 1. throughput (CIFAR presets, batch 16) =="
"$PY" benchmarks/model_throughput.py --device cuda --steps 5 \
  --presets cifar10_row_lstm cifar10_diagonal_bilstm cifar10_pixelcnn \
  --variants eager bf16 reference compiled | tee "$OUT/throughput.txt"

echo "== 2. DDP (NCCL) training smoke on $GPUS GPU worker(s), bf16 =="
DATA="$OUT/builtin-32"
[ -f "$DATA/manifest.json" ] || "$PIXELRNN" prepare builtin --output "$DATA"
export MLFLOW_TRACKING_URI="sqlite:///$(pwd)/$OUT/mlflow.db"
"$PIXELRNN" train --config experiments/smoke.yaml \
  --set data.path="$DATA" --set data.crop_size=0 \
  --set scaling.use_gpu=true --set scaling.num_workers="$GPUS" \
  --set train.precision=auto --set train.epochs=2 --set train.max_steps_per_epoch=20 \
  --set train.storage_path="$(pwd)/$OUT/runs" | tee "$OUT/train.txt"
echo "gpu_smoke: done; figures in $OUT/"
