"""Experiment configuration: one typed, frozen tree whose defaults live only in its fields.

Experiment YAMLs and `--set dotted.key=value` overrides reach it through one merge function
(`merge`); an unknown key, a wrong type or an impossible value raises `ConfigError` naming the
key. The model section nests `pixelrnn_model.ModelConfig`, optionally starting from a preset.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pixelrnn_model import PRESETS, ModelConfig

OPTIMIZERS = ("rmsprop", "adam")
SCHEDULES = ("constant", "cosine", "exponential")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class DataConfig:
    """Where the prepared dataset lives and what the model sees of it.

    Attributes:
        path: a folder written by `pixelrnn prepare` (relative to the working directory).
        train_split, val_split: split names in its manifest.
        crop_size: centre-crop every image to crop_size x crop_size (0 keeps the full image).
    """

    path: str = "data/builtin-32"
    train_split: str = "train"
    val_split: str = "val"
    crop_size: int = 0

    def __post_init__(self) -> None:
        _require(self.crop_size >= 0, "data.crop_size", f"must be >= 0, got {self.crop_size}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and gradient clipping.

    Attributes:
        optimizer: "rmsprop" (the paper's choice, section 5.2) or "adam".
        lr: peak learning rate, reached at the end of warm-up.
        momentum, rmsprop_alpha: RMSProp's momentum and squared-gradient decay.
        beta1, beta2: Adam's moment decays.
        eps: denominator guard of both optimizers.
        weight_decay: L2 penalty.
        warmup_steps: linear warm-up from 0 to `lr` over this many optimizer steps.
        schedule: "constant", "cosine" (to lr * min_lr_ratio at the last step) or
            "exponential" (times decay_rate per epoch).
        min_lr_ratio: floor of the cosine schedule, as a fraction of `lr`.
        decay_rate: per-epoch factor of the exponential schedule.
        grad_clip_norm: clip the global gradient norm to this value (0 disables clipping).
    """

    optimizer: str = "rmsprop"
    lr: float = 1e-3
    momentum: float = 0.0
    rmsprop_alpha: float = 0.95
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    decay_rate: float = 0.5
    grad_clip_norm: float = 1.0

    def __post_init__(self) -> None:
        _require(self.optimizer in OPTIMIZERS, "optim.optimizer", f"expected one of {OPTIMIZERS}")
        _require(self.schedule in SCHEDULES, "optim.schedule", f"expected one of {SCHEDULES}")
        _require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        for name in ("momentum", "rmsprop_alpha", "beta1", "beta2"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"optim.{name}", f"must be in [0, 1), got {value}")
        _require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        _require(self.eps > 0, "optim.eps", f"must be > 0, got {self.eps}")
        _require(0 < self.decay_rate <= 1, "optim.decay_rate", "must be in (0, 1]")
        for name in ("weight_decay", "warmup_steps", "grad_clip_norm"):
            _require(getattr(self, name) >= 0, f"optim.{name}", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop and where its checkpoints go.

    Attributes:
        epochs: passes over the training split.
        batch_size_per_worker: images per optimizer step on each worker.
        max_steps_per_epoch: cut epochs short after this many steps (0: the whole split).
        max_val_batches: validate on this many batches per worker (0: the whole split).
        report_every_steps: also report training metrics every N steps (0: once per epoch).
        seed: base seed; worker r of epoch e derives its own from (seed, r, e).
        bf16: bf16 autocast on GPU (ignored on CPU).
        keep_best: checkpoints kept by lowest val bits/dim, besides the latest.
        storage_path: folder of Ray Train runs (relative to the working directory).
        run_name: the run's folder under storage_path ("": experiment name + start time).
    """

    epochs: int = 10
    batch_size_per_worker: int = 16
    max_steps_per_epoch: int = 0
    max_val_batches: int = 0
    report_every_steps: int = 0
    seed: int = 0
    bf16: bool = True
    keep_best: int = 2
    storage_path: str = "runs"
    run_name: str = ""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size_per_worker", "keep_best"):
            _require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        for name in ("max_steps_per_epoch", "max_val_batches", "report_every_steps"):
            _require(getattr(self, name) >= 0, f"train.{name}", "must be >= 0")
        _require("/" not in self.run_name, "train.run_name", "must not contain '/'")


@dataclass(frozen=True)
class ScalingConfig:
    """Ray Train workers and failure handling.

    Attributes:
        num_workers: data-parallel training workers (DDP ranks).
        use_gpu: one GPU per worker, NCCL and bf16 autocast; otherwise CPU and gloo.
        cpus_per_worker: logical CPUs reserved by each worker.
        max_failures: worker-group restarts from the last checkpoint before the run fails.
        ray_address: cluster to attach to ("": RAY_ADDRESS when set, else a local cluster).
    """

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 1
    ray_address: str = ""

    def __post_init__(self) -> None:
        _require(self.num_workers >= 1, "scaling.num_workers", "must be >= 1")
        _require(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        _require(self.max_failures >= -1, "scaling.max_failures", "must be >= -1 (-1: forever)")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and sample grids.

    Attributes:
        tracking_uri: MLflow store ("": MLFLOW_TRACKING_URI when set, else ./mlflow.db).
        experiment_name: MLflow experiment, also the prefix of generated run names.
        sample_every_epochs: log a sample grid every N epochs (0: only after the last epoch).
        num_samples: images in each sample grid.
        sample_temperature: softmax temperature of the sampler.
    """

    tracking_uri: str = ""
    experiment_name: str = "pixelrnn"
    sample_every_epochs: int = 0
    num_samples: int = 16
    sample_temperature: float = 1.0

    def __post_init__(self) -> None:
        _require(bool(self.experiment_name), "tracking.experiment_name", "must not be empty")
        _require(self.sample_every_epochs >= 0, "tracking.sample_every_epochs", "must be >= 0")
        _require(self.num_samples >= 1, "tracking.num_samples", "must be >= 1")
        _require(self.sample_temperature > 0, "tracking.sample_temperature", "must be > 0")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one training run needs; `preset` names the model size it starts from."""

    preset: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step across all workers."""
        return self.train.batch_size_per_worker * self.scaling.num_workers

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a nested (or dotted) dict, as crossing into Ray or loaded from YAML."""
        return merge([flatten(config)])

    def to_dict(self) -> dict[str, Any]:
        """The nested dict of plain values that `from_dict` turns back into this config."""
        return dataclasses.asdict(self)

    def to_flat(self) -> dict[str, Any]:
        """Dotted keys to values: the MLflow params and the keys `--set` accepts."""
        return flatten(self.to_dict())


SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(ExperimentConfig)[f.name]
    for f in dataclasses.fields(ExperimentConfig)
    if dataclasses.is_dataclass(typing.get_type_hints(ExperimentConfig)[f.name])
}


def field_types() -> dict[str, type]:
    """Every dotted key of `ExperimentConfig` with its type (str, int, float or bool)."""
    types = {"preset": str}
    for section, section_type in SECTIONS.items():
        for name, annotation in typing.get_type_hints(section_type).items():
            types[f"{section}.{name}"] = annotation
    return types


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {"section.key": value}; dotted keys pass through unchanged."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def coerce(key: str, value: Any) -> Any:
    """Check `value` against the type of `key`; strings (from the CLI) are parsed to it."""
    types = field_types()
    if key not in types:
        if key in SECTIONS:
            raise ConfigError(f"{key}: is a section; give a mapping of its keys")
        close = difflib.get_close_matches(key, list(types), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key '{key}'{hint}")
    expected = types[key]
    if isinstance(value, str) and expected is not str:
        return _parse(key, value, expected)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not expected:
        raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r}")
    return value


def _parse(key: str, text: str, expected: type) -> Any:
    if expected is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
    else:
        try:
            return expected(text)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected {expected.__name__}, got {text!r}")


def merge(layers: Iterable[Mapping[str, Any]]) -> ExperimentConfig:
    """The one merge function: apply dotted-key layers in order onto the field defaults.

    Args:
        layers: flat {"section.key": value} mappings; later layers win.

    Returns:
        The validated config. Model fields start from `PRESETS[preset]` when a preset is set.
    """
    flat: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            flat[key] = coerce(key, value)
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in flat.items():
        if key != "preset":
            section, name = key.split(".", 1)
            sections[section][name] = value
    preset = flat.get("preset", "")
    if preset and preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    base_model = PRESETS[preset] if preset else ModelConfig()
    try:
        model = dataclasses.replace(base_model, **sections.pop("model"))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    built = {name: SECTIONS[name](**values) for name, values in sections.items()}
    return ExperimentConfig(preset=preset, model=model, **built)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """["a.b=1", ...] from `--set` -> {"a.b": "1"}; values are parsed later by type."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        overrides[key.strip()] = value
    return overrides


def read_yaml(path: str | Path) -> dict[str, Any]:
    """An experiment file's deltas as a flat dotted dict."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return flatten(loaded)


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """An experiment file (None: defaults only) with `--set` overrides applied on top."""
    layers = [read_yaml(path)] if path is not None else []
    return merge([*layers, parse_overrides(overrides)])


def changed_keys(before: ExperimentConfig, after: ExperimentConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    old, new = before.to_flat(), after.to_flat()
    return sorted(key for key in new if old.get(key) != new[key])
