#!/usr/bin/env bash
# Reproduce the Results (docs/results.md): the paper's comparison at small scale on 2 CPU cores.
#
#   benchmarks/results.sh [all | mnist [ARCH ...] | cifar10 [ARCH ...] | save | restore]
#   (default: all)
#
# From the repository root. Needs the real datasets in ../shared/data (or PIXELRNN_DATA_DIR):
# binarized_mnist/*.npz and cifar-10-batches-bin/data_batch_{1..5}.bin. Every training run has one
# core (one Ray Train worker) and the wall-clock budget of its config (`train.max_minutes`: 3 hours
# for each MNIST run; 4 for the CIFAR-10 PixelCNN, 5 for its Row LSTM and Diagonal BiLSTM); runs
# go two at a time, one per core, so `mnist` (3 runs) takes about 6 hours, `cifar10` about 9 and
# `all` about 12. Each run's output is
# appended to results/<run>.log. Everything is logged to MLflow (results/mnist.db,
# results/cifar10.db); checkpoints go to results/runs/, sample grids and compare tables to
# docs/results/. Stopped part-way (a machine that goes away), the same command continues every
# started run from its last checkpoint with the rest of its budget (`--resume`); delete results/
# to start over.
#
# Across machines: results/ is not in git. `save` packs it (run folders with their checkpoints,
# the MLflow stores, the logs; not the prepared data) into results-state/results.tar.xz, a file
# to commit; on a fresh checkout the training targets unpack it first (`restore` does only that)
# and go on. The run records hold absolute paths: restore into a checkout at the same path.
# Stop the training runs (and wait for them to exit) before `save`: a run loses at most the
# minutes since its last checkpoint (`train.checkpoint_every_minutes`), which its budget does not
# count.
set -euo pipefail

DATA_DIR=${PIXELRNN_DATA_DIR:-../shared/data}
PIXELRNN=${PIXELRNN:-.venv/bin/pixelrnn}
CIFAR_ARCHS=(pixelcnn row_lstm diagonal_bilstm)
MNIST_ARCHS=(diagonal_bilstm row_lstm pixelcnn)  # the first two run together, then the third

STATE=results-state/results.tar.xz

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

# results/ into $STATE, written beside and renamed into place, so a failed save leaves the last.
save_state() {
  [ -d results/runs ] || die "results/runs does not exist: nothing to save"
  if pgrep -f "experiments/results/.*\.yaml" > /dev/null; then
    die "training runs of experiments/results/ are going: stop them before saving"
  fi
  mkdir -p "$(dirname "$STATE")"
  tar -cJf "$STATE.partial" results
  mv "$STATE.partial" "$STATE"
  echo "results.sh: saved results/ into $STATE ($(du -h "$STATE" | cut -f1)): commit it"
}

# On a checkout without results/runs, unpack the saved state (when there is one).
restore_state() {
  if [ ! -d results/runs ] && [ -f "$STATE" ]; then
    tar -xJf "$STATE" --skip-old-files
    echo "results.sh: restored results/ from $STATE"
  fi
}

# One training run (experiments/results/<run>.yaml), then its final sample grid, which is
# saved with its last checkpoint, copied to docs/results/<run>.png. A run that has started
# before (its folder holds a run record) is continued with --resume: from its last checkpoint,
# with the rest of its budget, in the same MLflow run; one whose budget is spent ends at once.
train_run() {
  local run=$1 grid resume=()
  [ -f "results/runs/$run/pixelrnn_run.json" ] && resume=(--resume)
  "$PIXELRNN" train --config "experiments/results/$run.yaml" "${resume[@]}" ||
    die "$run: training stopped or failed"
  grid=$(find "results/runs/$run" -path "*/epoch_*/samples.png" | sort | tail -n 1)
  [ -n "$grid" ] || die "results/runs/$run: no sample grid in its checkpoints"
  cp "$grid" "docs/results/$run.png"
}

# Runs the named training runs two at a time (one per core), each logging to results/<run>.log.
train_runs() {
  printf '%s\n' "$@" | xargs -P 2 -n 1 "$0" _run ||
    die "a training run failed: see the results/<run>.log files"
}

# The compare table, and the validation curves against optimizer steps and against minutes of
# training (wall clock): <dataset>_curves.png and <dataset>_curves_minutes.png.
compare_runs() {
  local dataset=$1 experiment=$2 metric=$3
  local common=(--experiment "$experiment" --metric "$metric"
    --tracking-uri "sqlite:///results/$dataset.db")
  "$PIXELRNN" compare "${common[@]}" --x step --out "docs/results/${dataset}_curves.png" |
    tee "docs/results/${dataset}_compare.txt"
  "$PIXELRNN" compare "${common[@]}" --x minutes \
    --out "docs/results/${dataset}_curves_minutes.png" > /dev/null
}

compare_mnist() { compare_runs mnist results-binarized-mnist val/nll_nats; }
compare_cifar10() { compare_runs cifar10 results-cifar10 val/bits_per_dim; }

case "${1:-all}" in
  _run)  # exit status 255 makes xargs start no further run: a stopped run stops the queue
    (train_run "$2") >> "results/$2.log" 2>&1 ||
      { echo "results.sh: $2 stopped or failed: see results/$2.log" >&2; exit 255; }
    echo "results.sh: $2 done"
    ;;
  save) save_state ;;
  restore) restore_state ;;
  mnist)
    restore_state
    shift
    archs=("$@")
    [ ${#archs[@]} -gt 0 ] || archs=("${MNIST_ARCHS[@]}")
    prepare_mnist
    train_runs "${archs[@]/#/mnist_}"
    compare_mnist
    ;;
  cifar10)
    restore_state
    shift
    archs=("$@")
    [ ${#archs[@]} -gt 0 ] || archs=("${CIFAR_ARCHS[@]}")
    prepare_cifar10
    train_runs "${archs[@]/#/cifar10_}"
    compare_cifar10
    ;;
  all)
    restore_state
    prepare_mnist
    prepare_cifar10
    train_runs "${MNIST_ARCHS[@]/#/mnist_}" "${CIFAR_ARCHS[@]/#/cifar10_}"
    compare_mnist
    compare_cifar10
    ;;
  *) die "unknown target '$1' (expected all, mnist, cifar10, save or restore)" ;;
esac
