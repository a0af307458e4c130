#!/usr/bin/env bash
# Reproduce README's "Results": the paper's comparison at small scale on 2 CPU cores.
#
#   benchmarks/results.sh [all|mnist|cifar10 [ARCH ...]]   (from the repository root; default: all)
#
# Needs the real datasets in ../shared/data (or PIXELRNN_DATA_DIR): binarized_mnist/*.npz and
# cifar-10-batches-bin/data_batch_{1..5}.bin. `all` runs the 2-hour MNIST job on one core while
# the three 35-minute CIFAR-10 jobs run one after another on the other. Everything is logged to
# MLflow (results/mnist.db, results/cifar10.db); checkpoints go to results/runs/, sample grids
# to docs/results/. Runs are named, so a second call refuses to overwrite them: delete results/
# first, or continue an interrupted run with `pixelrnn train --config ... --resume`.
set -euo pipefail

DATA_DIR=${PIXELRNN_DATA_DIR:-../shared/data}
PIXELRNN=${PIXELRNN:-.venv/bin/pixelrnn}
CIFAR_ARCHS=(pixelcnn row_lstm diagonal_bilstm)

die() { echo "results.sh: $*" >&2; exit 1; }
[ -x "$PIXELRNN" ] || die "$PIXELRNN not found: run 'make install' first"
mkdir -p results docs/results

# The final sample grid of a finished run: saved with its last checkpoint.
copy_grid() {
  local run_dir=results/runs/$1 grid
  grid=$(find "$run_dir" -path "*/epoch_*/samples.png" | sort | tail -n 1)
  [ -n "$grid" ] || die "$run_dir: no sample grid in its checkpoints"
  cp "$grid" "docs/results/$1.png"
}

mnist() {
  local input=$DATA_DIR/binarized_mnist/binarized_mnist_train_valid.npz
  [ -f "$input" ] || die "$input is missing: binarized MNIST is needed"
  [ -f data/results/binarized-mnist/manifest.json ] ||
    "$PIXELRNN" prepare binarized_mnist --input "$input" --output data/results/binarized-mnist
  "$PIXELRNN" train --config experiments/results/mnist_diagonal_bilstm.yaml
  copy_grid mnist_diagonal_bilstm
  "$PIXELRNN" compare --experiment results-binarized-mnist --metric val/nll_nats \
    --tracking-uri sqlite:///results/mnist.db --out docs/results/mnist_curves.png |
    tee docs/results/mnist_compare.txt
}

cifar10() {
  local input=$DATA_DIR/cifar-10-batches-bin
  [ -d "$input" ] || die "$input is missing: CIFAR-10 (binary version) is needed"
  [ -f data/results/cifar10/manifest.json ] ||
    "$PIXELRNN" prepare cifar10 --input "$input" --output data/results/cifar10 \
      --split val=data_batch_5.bin
  local archs=("$@")
  [ ${#archs[@]} -gt 0 ] || archs=("${CIFAR_ARCHS[@]}")
  for arch in "${archs[@]}"; do
    "$PIXELRNN" train --config "experiments/results/cifar10_$arch.yaml"
    copy_grid "cifar10_$arch"
  done
  "$PIXELRNN" compare --experiment results-cifar10 --tracking-uri sqlite:///results/cifar10.db \
    --out docs/results/cifar10_curves.png | tee docs/results/cifar10_compare.txt
}

case "${1:-all}" in
  mnist) mnist ;;
  cifar10) shift; cifar10 "$@" ;;
  all)
    mnist > results/mnist.log 2>&1 &
    mnist_pid=$!
    cifar10 2>&1 | tee results/cifar10.log
    wait "$mnist_pid" || die "the MNIST job failed: see results/mnist.log"
    tail -n 8 results/mnist.log
    ;;
  *) die "unknown target '$1' (expected all, mnist or cifar10)" ;;
esac
