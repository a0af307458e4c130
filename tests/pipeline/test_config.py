"""ExperimentConfig: round trips, the one merge function, and rejected configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.cli.main import main
from pipeline.config import ExperimentConfig, field_types, load_config, merge, read_yaml
from pipeline.errors import ConfigError
from pixelrnn_model import PRESETS

EXPERIMENTS = sorted((Path(__file__).resolve().parents[2] / "experiments").rglob("*.yaml"))
PAPER_FILES = {
    "mnist_diagonal_bilstm", "cifar10_row_lstm", "cifar10_diagonal_bilstm", "cifar10_pixelcnn",
    "imagenet32_row_lstm", "imagenet64_row_lstm",
}  # fmt: skip


def test_defaults_round_trip_through_nested_and_flat_dicts():
    cfg = ExperimentConfig()
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert ExperimentConfig.from_dict(cfg.to_flat()) == cfg
    assert set(cfg.to_flat()) == set(field_types())


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_files_load_and_round_trip(path):
    cfg = load_config(path)
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_files_hold_only_deltas(path):
    deltas = read_yaml(path)
    preset = deltas.get("preset", "")
    baseline = merge([{"preset": preset}]).to_flat() if preset else ExperimentConfig().to_flat()
    restated = [k for k, v in deltas.items() if k != "preset" and baseline[k] == v]
    assert not restated, f"{path.name} restates defaults: {restated}"


def test_paper_experiments_take_their_sizes_from_the_presets():
    assert {p.stem for p in EXPERIMENTS} >= PAPER_FILES
    for name in PAPER_FILES:
        cfg = load_config(next(p for p in EXPERIMENTS if p.stem == name))
        assert cfg.preset == name
        assert cfg.model == PRESETS[name]


def test_overrides_are_parsed_by_field_type_and_later_layers_win(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("optim:\n  lr: 1e-3\ntrain:\n  epochs: 3\n")  # YAML reads 1e-3 as a string
    cfg = load_config(path, ["train.epochs=5", "train.precision=fp32", "scaling.cpus_per_worker=2",
                             "tracking.experiment_name=x=y", "model.residual=no"])  # fmt: skip
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert (cfg.train.epochs, cfg.train.precision, cfg.model.residual) == (5, "fp32", False)
    assert cfg.scaling.cpus_per_worker == 2.0
    assert cfg.tracking.experiment_name == "x=y"


def test_preset_then_model_overrides():
    cfg = merge([{"preset": "cifar10_row_lstm"}, {"model.num_layers": 3}])
    assert cfg.model == dataclasses.replace(PRESETS["cifar10_row_lstm"], num_layers=3)
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_batch_size_is_global_and_split_over_the_workers():
    cfg = merge([{"train.batch_size": 32, "scaling.num_workers": 4}])
    assert cfg.batch_size_per_worker == 8
    with pytest.raises(ConfigError, match=r"^train\.batch_size: 30 images per step cannot be "
                       r"split evenly over scaling\.num_workers=4 workers"):  # fmt: skip
        merge([{"train.batch_size": 30, "scaling.num_workers": 4}])


@pytest.mark.parametrize("written", ["[1,4]", "[1, 4]", "1,4", [1, 4], (1, 4)])
def test_num_workers_takes_a_range_from_the_cli_yaml_or_a_dict(written, tmp_path):
    cfg = merge([{"scaling.num_workers": written, "train.batch_size": 10}])
    assert cfg.scaling.num_workers == [1, 4]
    assert (cfg.scaling.elastic, cfg.scaling.min_workers, cfg.scaling.max_workers) == (
        True, 1, 4)  # fmt: skip
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg  # as it crosses into Ray
    assert cfg.batch_size_per_worker == 10  # the most on one worker: all of it, alone
    assert cfg.describe_batch_per_worker() == "2-10"  # 10 // 4 = 2 (some get 3), up to 10
    yaml_file = tmp_path / "elastic.yaml"
    yaml_file.write_text("scaling:\n  num_workers: [2, 8]\n")
    assert load_config(yaml_file).scaling.num_workers == [2, 8]


def test_a_fixed_worker_count_is_unchanged():
    cfg = load_config(None, ["scaling.num_workers=3", "train.batch_size=12"])
    assert cfg.scaling.num_workers == 3 and not cfg.scaling.elastic
    assert (cfg.scaling.min_workers, cfg.scaling.max_workers) == (3, 3)
    assert cfg.batch_size_per_worker == 4 and cfg.describe_batch_per_worker() == "4"


def test_the_removed_per_worker_batch_names_the_global_one(tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.batch_size_per_worker was removed: set "
                       r"train\.batch_size, the global batch"):  # fmt: skip
        merge([{"train.batch_size_per_worker": 8}])
    stored = {"train": {"batch_size_per_worker": 8}, "scaling": {"num_workers": 4}}
    assert ExperimentConfig.from_stored(stored).train.batch_size == 32  # checkpoints, weights
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  batch_size_per_worker: 8\n")
    assert main(["config", "show", "--config", str(old)]) == 2


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        ({"optim.lrr": 1.0}, "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ({"nonsense": 1}, "unknown config key 'nonsense'"),
        ({"optim": 3}, "optim: is a section"),
        ({"optim.lr": "fast"}, "optim.lr: expected float, got 'fast'"),
        ({"train.epochs": 2.5}, "train.epochs: expected int, got 2.5"),
        ({"train.compile": 1}, "train.compile: expected bool, got 1"),
        ({"train.compile": "maybe"}, "train.compile: expected bool"),
        ({"train.precision": "fp16"}, "train.precision: expected one of"),
        ({"data.path": 3}, "data.path: expected str, got 3"),
        ({"optim.lr": -1}, "optim.lr: must be > 0"),
        ({"optim.optimizer": "sgd"}, "optim.optimizer: expected one of"),
        ({"optim.beta2": 1.0}, "optim.beta2: must be in [0, 1)"),
        ({"train.epochs": 0}, "train.epochs: must be >= 1"),
        ({"scaling.num_workers": 0}, "scaling.num_workers: expected a worker count >= 1"),
        (
            {"scaling.num_workers": "[2,1]"},
            "scaling.num_workers: expected a worker count >= 1 "
            "or a range [min, max] with 1 <= min <= max, got [2, 1]",
        ),
        ({"scaling.num_workers": [0, 2]}, "scaling.num_workers: expected a worker count"),
        ({"scaling.num_workers": "[1,2,3]"}, "scaling.num_workers: expected a worker count"),
        ({"scaling.num_workers": "many"}, "scaling.num_workers: expected an int or a range"),
        ({"scaling.num_workers": [1.0, 2]}, "scaling.num_workers: expected an int or a range"),
        (
            {"scaling.num_workers": "[1,4]", "train.batch_size": 3},
            "train.batch_size: 3 images per step leave some of up to 4 workers",
        ),
        ({"scaling.elastic_start_timeout_s": 0}, "scaling.elastic_start_timeout_s: must be > 0"),
        ({"model.hidden_channels": 13}, "model.hidden_channels: 13 is not divisible by channels"),
        ({"model.layer": "gru"}, "model.layer: expected one of"),
        ({"preset": "cifar100"}, "preset: unknown preset 'cifar100'"),
        ({"train.run_name": "a/b"}, "train.run_name: must not contain '/'"),
        ({"train.max_minutes": -1}, "train.max_minutes: must be >= 0"),
        ({"train.max_minutes": "2h"}, "train.max_minutes: expected float, got '2h'"),
        ({"train.interim_val_batches": -2}, "train.interim_val_batches: must be >= 0"),
        (
            {"optim.anneal_minutes": 5.0},
            "optim.anneal_minutes: must be at most train.max_minutes (0",
        ),
        (
            {"optim.anneal_minutes": 50.0, "train.max_minutes": 30.0},
            "train.max_minutes (30; 0 means no budget), got 50",
        ),
    ],
)
def test_bad_values_are_rejected_naming_the_key(layer, fragment):
    with pytest.raises(ConfigError) as info:
        merge([layer])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_override_syntax_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_cli_rejects_a_bad_config_in_one_line_naming_the_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: -1\n")
    assert main(["train", "--config", str(path)]) == 2
    assert capsys.readouterr().err == "pixelrnn: error: optim.lr: must be > 0, got -1.0\n"
    assert main(["train", "--config", str(path), "--set", "optim.lr=1e-3", "--set", "x.y=1"]) == 2
    assert capsys.readouterr().err == "pixelrnn: error: unknown config key 'x.y'\n"
