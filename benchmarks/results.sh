#!/usr/bin/env bash
# Reproduce the Results (docs/results.md): the paper's comparison at small scale on 2 CPU cores.
#
#   benchmarks/results.sh [all|mnist|cifar10 [ARCH ...]]   (from the repository root; default: all)
#
# Needs the real datasets in ../shared/data (or PIXELRNN_DATA_DIR): binarized_mnist/*.npz and
# cifar-10-batches-bin/data_batch_{1..5}.bin. Every training run has one core (one Ray Train
# worker) and the wall-clock budget of its config (`train.max_minutes`: 2 hours for MNIST, 3 for
# each CIFAR-10 model); runs go two at a time, one per core, so `cifar10` takes about 6 hours
# (3 runs on 2 cores) and `all` (MNIST too) about 6 hours. Each run's output goes to results/<run>.log.
# Everything is logged to MLflow (results/mnist.db, results/cifar10.db); checkpoints go to results/runs/,
# sample grids and compare tables to docs/results/. Runs are named, so a second call refuses to
# overwrite them: delete results/ first, or continue a stopped run with
# `pixelrnn train --config experiments/results/<run>.yaml --resume`.
set -euo pipefail

DATA_DIR=${PIXELRNN_DATA_DIR:-../shared/data}
PIXELRNN=${PIXELRNN:-.venv/bin/pixelrnn}
CIFAR_ARCHS=(pixelcnn row_lstm diagonal_bilstm)

die() { echo "results.sh: $*" >&2; exit 1; }
[ -x "$PIXELRNN" ] || die "$PIXELRNN not found: run 'make install' first"
mkdir -p results docs/results

prepare_mnist() {
  local input=$DATA_DIR/binarized_mnist/binarized_mnist_train_valid.npz
  [ -f "$input" ] || die "$input is missing: binarized MNIST is needed"
  [ -f data/results/binarized-mnist/manifest.json ] ||
    "$PIXELRNN" prepare binarized_mnist --input "$input" --output data/results/binarized-mnist
}

prepare_cifar10() {
  local input=$DATA_DIR/cifar-10-batches-bin
  [ -d "$input" ] || die "$input is missing: CIFAR-10 (binary version) is needed"
  [ -f data/results/cifar10/manifest.json ] ||
    "$PIXELRNN" prepare cifar10 --input "$input" --output data/results/cifar10 \
      --split val=data_batch_5.bin
}

# One training run (experiments/results/<run>.yaml), then its final sample grid, which is
# saved with its last checkpoint, copied to docs/results/<run>.png.
train_run() {
  local run=$1 grid
  "$PIXELRNN" train --config "experiments/results/$run.yaml" || die "$run: training failed"
  grid=$(find "results/runs/$run" -path "*/epoch_*/samples.png" | sort | tail -n 1)
  [ -n "$grid" ] || die "results/runs/$run: no sample grid in its checkpoints"
  cp "$grid" "docs/results/$run.png"
}

# Runs the named training runs two at a time (one per core), each logging to results/<run>.log.
train_runs() {
  printf '%s\n' "$@" | xargs -P 2 -n 1 "$0" _run ||
    die "a training run failed: see the results/<run>.log files"
}

compare_mnist() {
  "$PIXELRNN" compare --experiment results-binarized-mnist --metric val/nll_nats \
    --tracking-uri sqlite:///results/mnist.db --out docs/results/mnist_curves.png |
    tee docs/results/mnist_compare.txt
}

compare_cifar10() {
  "$PIXELRNN" compare --experiment results-cifar10 --tracking-uri sqlite:///results/cifar10.db \
    --out docs/results/cifar10_curves.png | tee docs/results/cifar10_compare.txt
}

case "${1:-all}" in
  _run)
    train_run "$2" > "results/$2.log" 2>&1
    echo "results.sh: $2 done"
    ;;
  mnist) prepare_mnist && train_runs mnist_diagonal_bilstm && compare_mnist ;;
  cifar10)
    shift
    archs=("$@")
    [ ${#archs[@]} -gt 0 ] || archs=("${CIFAR_ARCHS[@]}")
    prepare_cifar10
    train_runs "${archs[@]/#/cifar10_}"
    compare_cifar10
    ;;
  all)
    prepare_mnist
    prepare_cifar10
    train_runs mnist_diagonal_bilstm "${CIFAR_ARCHS[@]/#/cifar10_}"
    compare_mnist
    compare_cifar10
    ;;
  *) die "unknown target '$1' (expected all, mnist or cifar10)" ;;
esac
