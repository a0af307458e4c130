"""`pixelrnn tune --config FILE --space NAME [--num-samples N] [--max-concurrent K] [--resume]`."""

from __future__ import annotations

import argparse

from pipeline.cli.options import add_experiment_options, load_experiment


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tune` command."""
    parser = subparsers.add_parser(
        "tune",
        help="sweep a search space with Ray Tune (ASHA), one Ray Train run per trial",
        description="Sweep a search space from tune_spaces/ with Ray Tune: every trial is a "
        "`pixelrnn train` run (its own Ray Train workers) and an MLflow child run of the sweep; "
        "ASHA stops weak trials at epoch rungs; the best trial's config is written out as an "
        "experiment file.",
    )
    add_experiment_options(
        parser,
        "tune.grace_period_epochs=2",
        "continue the sweep named by tune.sweep_name (default: this experiment's latest) "
        "without rerunning finished trials",
        "pixelrnn tune --config experiments/demo.yaml --space row_lstm --num-samples 8",
    )
    parser.add_argument(
        "--space",
        help="search space: row_lstm, diagonal_bilstm, pixelcnn or cross_architecture "
        "(same as --set tune.space=NAME)",
    )
    parser.add_argument("--num-samples", type=int, help="trials to draw (tune.num_samples)")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        help="trials at once (tune.max_concurrent_trials; default: as many as the cluster holds "
        "once its autoscaler has added every node it may; trials wait for those nodes)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    """Run the sweep and describe it: trials, the best one, its experiment file, MLflow."""
    flags = {"tune.space": args.space, "tune.num_samples": args.num_samples,
             "tune.max_concurrent_trials": args.max_concurrent}  # fmt: skip
    overrides = [
        *args.overrides,
        *(f"{key}={value}" for key, value in flags.items() if value is not None),
    ]
    cfg = load_experiment(args.config, overrides)
    from pipeline.tune import run_sweep  # imports Ray: keep `pixelrnn --help` fast

    summary = run_sweep(cfg, resume=args.resume)
    record = summary.record
    lines = [f"sweep {record.name} ({record.space}): {len(summary.trials)} trials"]
    for trial in summary.trials:
        value = trial.metrics.get(cfg.tune.metric, float("nan"))
        epoch = int(trial.metrics.get("epoch", 0))
        lines.append(f"  {trial.name}  {trial.status:<8}  epoch {epoch}  "
                     f"last {cfg.tune.metric} {value:.4f}")  # fmt: skip
    lines += [
        f"best trial {summary.best_trial}: {cfg.tune.metric} {summary.best_value:.4f}",
        f"best config: {summary.best_experiment}",
        f"MLflow parent run {record.parent_run_id} in {record.tracking_uri}",
        f"compare: pixelrnn compare --tracking-uri {record.tracking_uri} "
        f"--parent {record.parent_run_id}",
    ]
    return "\n".join(lines)
