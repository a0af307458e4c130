"""Comparing runs from any MLflow store: which layer, depth, width and optimizer did best.

One row per training run (a sweep's trials, an experiment's runs, or runs by id) with its best
validation value, and a PNG of the validation curves against epochs, optimizer steps or minutes of
training (wall clock), side by side with the best values. Reads through `tracking`; the figure is
drawn with matplotlib's Agg canvas (no display).
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from pipeline import tracking
from pipeline.errors import PixelRNNError

logger = logging.getLogger(__name__)

HEADERS = ("run", "layer", "depth", "hidden", "optimizer", "lr", "best {metric}", "epoch",
           "images/s", "status")  # fmt: skip
STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed", "RUNNING": "running"}
# The curves' x axes: epochs (steps / steps per epoch), optimizer steps, or the minutes of the
# training loop at each report (`time/train_minutes`, which a resumed run carries on).
X_AXES = {"epoch": "epoch", "step": "optimizer step", "minutes": "minutes of training (wall clock)"}
MINUTES_METRIC = "time/train_minutes"


@dataclass(frozen=True)
class RunRow:
    """One run in the comparison; `curve` holds (x, value) points of the metric, x on the axis
    `collect` was asked for (`X_AXES`)."""

    run_id: str
    name: str
    layer: str
    depth: str
    hidden: str
    optimizer: str
    lr: str
    best: float  # nan when the run never reported the metric
    epoch: int
    images_per_s: float
    status: str
    curve: list[tuple[float, float]]


def collect(
    tracking_uri: str,
    metric: str,
    experiment: str | None = None,
    run_ids: tuple[str, ...] = (),
    parent_run_id: str | None = None,
    mode: str = "min",
    x: str = "epoch",
) -> list[RunRow]:
    """The rows to compare, best first; sweep parent runs are not training runs and are left out.

    `x` is the curves' axis, a key of `X_AXES`; against minutes, the points whose report carried
    no `time/train_minutes` (runs logged before it existed) are left out.

    Raises:
        PixelRNNError: nothing matches, or the experiment / a run is not in the store.
    """
    found = tracking.find_runs(tracking_uri, experiment, run_ids, parent_run_id)
    runs = [run for run in found if run.tags.get("pixelrnn.role") != "sweep" or run_ids]
    if not runs:
        where = f"children of run {parent_run_id}" if parent_run_id else f"experiment {experiment}"
        raise PixelRNNError(f"no training runs to compare ({where} in {tracking_uri})")
    rows = [_row(tracking_uri, run, metric, mode, x) for run in runs]
    sign = 1 if mode == "min" else -1
    return sorted(rows, key=lambda row: (math.isnan(row.best), sign * row.best, row.name))


def _row(tracking_uri: str, run: tracking.RunSummary, metric: str, mode: str, x: str) -> RunRow:
    tracker = tracking.RunTracker(tracking_uri, run.run_id)
    history = tracker.metric_history(metric)
    curve = _curve(tracker, run, history, x)
    # The best of the epoch-end reports (the ones with a checkpoint, scored on the whole
    # validation split): interim reports (`train.report_every_steps`) carry no "epoch" and may
    # score a subset (`train.interim_val_batches`), so they are drawn but not ranked.
    epoch_steps = {step for step, _ in tracker.metric_history("epoch")}
    values = [value for step, value in history if step in epoch_steps] or [v for _, v in history]
    best = (min(values) if mode == "min" else max(values)) if values else float("nan")
    throughput = [value for _, value in tracker.metric_history("throughput/images_per_s")]
    status = STATUS.get(run.status, run.status.lower())
    if run.status == "KILLED" and run.tags.get("pixelrnn.stopped_early") == "true":
        status = "stopped (ASHA)"
    params = run.params
    return RunRow(
        run_id=run.run_id, name=run.name, layer=params.get("model.layer", "?"),
        depth=params.get("model.num_layers", "?"), hidden=params.get("model.hidden_channels", "?"),
        optimizer=params.get("optim.optimizer", "?"), lr=_short(params.get("optim.lr", "?")),
        best=best, epoch=int(run.metrics.get("epoch", 0)),
        images_per_s=statistics.median(throughput) if throughput else float("nan"),
        status=status, curve=curve,
    )  # fmt: skip


def _curve(tracker, run: tracking.RunSummary, history: list, x: str) -> list[tuple[float, float]]:
    """(x, value) points of one run's `history` of (step, value)."""
    if x == "step":
        return [(float(step), value) for step, value in history]
    if x == "minutes":
        minutes = dict(tracker.metric_history(MINUTES_METRIC))  # step -> minutes, last wins
        return [(minutes[step], value) for step, value in history if step in minutes]
    steps_per_epoch = float(run.params.get("derived.steps_per_epoch", 0) or 0)
    return [(step / steps_per_epoch if steps_per_epoch else float(step), value)
            for step, value in history]  # fmt: skip


def _short(number: str) -> str:
    try:
        return f"{float(number):.3g}"
    except ValueError:
        return number


def format_table(rows: list[RunRow], metric: str) -> str:
    """A plain-text table, one line per run, columns aligned."""
    headers = [header.format(metric=metric) for header in HEADERS]
    body = [
        [row.name, row.layer, row.depth, row.hidden, row.optimizer, row.lr, _number(row.best, 4),
         str(row.epoch), _number(row.images_per_s, 1), row.status]
        for row in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
             for line in [headers, *body]]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def _number(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def plot_curves(rows: list[RunRow], metric: str, path: Path, x: str = "epoch") -> Path:
    """Validation curves of every run (left, against `x`) beside each run's best value (right),
    as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 0.3 * len(rows) + 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    curves, bests = figure.subplots(1, 2, width_ratios=[3, 2])
    for index, row in enumerate(rows):
        if row.curve:
            epochs, values = zip(*row.curve, strict=True)
            curves.plot(epochs, values, marker="o", markersize=3, color=f"C{index % 10}",
                        label=f"{row.name}: {row.layer} {row.depth}x{row.hidden}, "
                              f"{row.optimizer} lr {row.lr}")  # fmt: skip
    curves.set(xlabel=X_AXES[x], ylabel=metric, title=f"{metric} during training")
    curves.grid(alpha=0.3)
    if any(row.curve for row in rows):
        curves.legend(fontsize=8, loc="upper right")
    scored = [(index, row) for index, row in enumerate(rows) if not math.isnan(row.best)]
    for index, row in scored:  # dots, not bars from 0: the differences are often in decimals
        bests.plot(row.best, index, "o", markersize=8, color=f"C{index % 10}")
        bests.annotate(f"{row.best:.4f}", (row.best, index), xytext=(8, -3),
                       textcoords="offset points", fontsize=8)  # fmt: skip
    bests.set_yticks(range(len(rows)), [f"{row.name} ({row.status})" for row in rows])
    bests.set_ylim(len(rows) - 0.5, -0.5)  # best first, as in the table
    bests.set(xlabel=f"best {metric}", title="best value per run")
    bests.grid(axis="x", alpha=0.3)
    bests.margins(x=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def compare(
    tracking_uri: str,
    metric: str,
    out: Path,
    experiment: str | None = None,
    run_ids: tuple[str, ...] = (),
    parent_run_id: str | None = None,
    x: str = "epoch",
) -> tuple[list[RunRow], str, Path]:
    """Collect, tabulate and plot (curves against `x`, a key of `X_AXES`); the PNG is logged to
    the parent run when one is given.

    Returns:
        (rows, table text, PNG path).
    """
    rows = collect(tracking_uri, metric, experiment, run_ids, parent_run_id, x=x)
    png = plot_curves(rows, metric, out, x)
    if parent_run_id:
        tracking.RunTracker(tracking_uri, parent_run_id).log_artifact(png, "compare")
        logger.info("logged %s to run %s", png.name, parent_run_id)
    return rows, format_table(rows, metric), png
