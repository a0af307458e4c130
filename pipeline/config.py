"""Experiment configuration: one typed, frozen tree whose defaults live only in its fields.

Experiment YAMLs and `--set dotted.key=value` overrides reach it through one merge function
(`merge`); an unknown key, a wrong type or an impossible value raises `ConfigError` naming the
key. The model section nests `pixelrnn_model.ModelConfig`, optionally starting from a preset.
Over 400 lines because each section's fields, their one-line descriptions (the config
reference reads them from here) and their checks stay together, beside the one merge path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
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
PRECISIONS = ("auto", "bf16", "fp32")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _at_least(section: str, config: Any, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        _require(value >= minimum, f"{section}.{name}", f"must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class DataConfig:
    """Where the prepared dataset lives and what the model sees of it."""

    path: str = "data/builtin-32"  # a folder written by `pixelrnn prepare`
    train_split: str = "train"  # split the model is trained on
    val_split: str = "val"  # split validated on each epoch (and `evaluate`'s default split)
    crop_size: int = 0  # centre-crop images to crop_size x crop_size (0: full images)
    # At start, check every shard's sha256 too (reads the whole dataset once); by default only
    # that each shard is there with its recorded size (`pixelrnn verify` runs the full check)
    verify: bool = False

    def __post_init__(self) -> None:
        _at_least("data", self, 0, "crop_size")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer (RMSProp is the paper's choice, section 5.2), schedule and clipping."""

    optimizer: str = "rmsprop"  # "rmsprop" (the paper's) or "adam"
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    momentum: float = 0.0  # RMSProp's momentum
    rmsprop_alpha: float = 0.95  # RMSProp's squared-gradient decay
    beta1: float = 0.9  # Adam's first-moment decay
    beta2: float = 0.999  # Adam's second-moment decay
    eps: float = 1e-8  # added to the denominator of RMSProp and Adam
    weight_decay: float = 0.0  # L2 penalty added to the gradients
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many optimizer steps
    # "constant", "cosine" (to lr * min_lr_ratio at the last step) or "exponential"
    # (times decay_rate per epoch)
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0  # the cosine schedule (and annealing) ends at lr * min_lr_ratio
    decay_rate: float = 0.5  # the exponential schedule multiplies lr by this each epoch
    # With train.max_minutes: over the budget's last anneal_minutes the learning rate is also
    # multiplied by a cosine from 1 down to min_lr_ratio, by wall-clock time (a time budget has
    # no known last step). With schedule "constant" this is warmup-stable-decay; a run resumed
    # with a longer budget and anneal_minutes set continues its stable phase, then anneals.
    anneal_minutes: float = 0.0
    grad_clip_norm: float = 1.0  # clip the global gradient norm (0: no clipping)

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
        _at_least("optim", self, 0, "weight_decay", "warmup_steps", "grad_clip_norm",
                  "anneal_minutes")  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """The training loop and where its checkpoints go."""

    epochs: int = 10  # passes over the training split
    # Images per optimizer step over all workers (the global batch), whatever the worker count:
    # each worker trains on its 1/scaling.num_workers of every batch, so a fixed worker count must
    # divide it; with a range the shares may differ by one image (each weighted by its size)
    batch_size: int = 32
    max_steps_per_epoch: int = 0  # cut epochs short (0: the whole split)
    max_val_batches: int = 0  # global batches per validation (0: the whole split)
    # Wall-clock budget of the training loop in minutes, over all restarts and resumes (0: none).
    # When it is spent, training stops after the current step; the run then validates,
    # checkpoints and samples as after its last epoch.
    max_minutes: float = 0.0
    report_every_steps: int = 0  # also report train + val metrics every N steps (0: never)
    interim_val_batches: int = 0  # global batches for those reports' val (0: max_val_batches)
    # The epoch's data order is a function of (seed, epoch) (`pixelrnn batches` prints it); worker
    # r in epoch e derives its other seeds from (seed, r, e)
    seed: int = 0
    # "auto": bf16 autocast on GPU, fp32 on CPU; "bf16": bf16 wherever the device computes it
    # natively (GPUs, CPUs with AVX-512 BF16 or AMX); "fp32": never. Losses stay float32.
    precision: str = "auto"
    compile: bool = False  # torch.compile the model (first steps slower while it compiles)
    keep_best: int = 2  # epoch-end checkpoints kept by lowest val bits/dim, besides the latest
    # Rank 0 also checkpoints inside epochs at this interval of wall clock, recording how far
    # into the epoch's data order training got (0: at epoch ends only). A preempted worker then
    # costs at most this much training.
    checkpoint_every_minutes: float = 0.0
    storage_path: str = "runs"  # folder of Ray Train runs
    run_name: str = ""  # folder under storage_path ("": experiment name + start time)

    def __post_init__(self) -> None:
        _at_least("train", self, 1, "epochs", "batch_size", "keep_best")
        _at_least("train", self, 0, "max_steps_per_epoch", "max_val_batches", "report_every_steps",
                  "interim_val_batches", "max_minutes", "checkpoint_every_minutes")  # fmt: skip
        _require("/" not in self.run_name, "train.run_name", "must not contain '/'")
        _require(
            self.precision in PRECISIONS,
            "train.precision",
            f"expected one of {PRECISIONS}, got {self.precision!r}",
        )


@dataclass(frozen=True)
class ScalingConfig:
    """Ray Train workers (DDP ranks) and failure handling."""

    # Ray Train workers, one DDP rank each; a range [min, max] makes the run elastic: it starts
    # with as many as fit (at least min), goes on with fewer when workers are lost and grows
    # back when resources return, each time from the latest checkpoint (docs/cluster.md)
    num_workers: int | list[int] = 2
    use_gpu: bool = False  # one GPU per worker and NCCL; otherwise CPU and gloo
    # The Ray resource that marks a training node: each worker holds one. "GPU" means GPUs (held
    # with use_gpu); another name is a custom resource the nodes declare, held whether or not
    # use_gpu is set (e.g. "A100" with use_gpu, or a stand-in for GPUs on CPU-only test
    # clusters without it, which then train on CPU and gloo).
    accelerator_resource: str = "GPU"
    cpus_per_worker: float = 1.0  # logical CPUs Ray reserves for each worker
    # Worker-group restarts from the last checkpoint after a worker fails or is lost (-1:
    # forever); an elastic run's resizes are not failures (docs/cluster.md)
    max_failures: int = 1
    ray_address: str = ""  # cluster to attach to ("": RAY_ADDRESS if set, else a local one)
    # The autoscaler's cluster config on the driver's node, read for its worker node types when
    # the cluster reports none (`ray up` writes this file on the head; "": none).
    autoscaler_config: str = "~/ray_bootstrap_config.yaml"
    # Elastic runs: how often Ray Train checks whether more workers fit now (and then restarts
    # the group bigger from the latest checkpoint), in seconds
    elastic_resize_monitor_interval_s: float = 60.0
    # Elastic runs: how long a worker group may wait for its placement before Ray Train tries
    # again with the workers that fit then (its view of free resources can be stale)
    elastic_start_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        workers = self.num_workers
        valid = (isinstance(workers, list) and len(workers) == 2) or isinstance(workers, int)
        counts = workers if isinstance(workers, list) else [workers]
        _require(
            valid and all(type(n) is int and n >= 1 for n in counts) and counts[0] <= counts[-1],
            "scaling.num_workers",
            f"expected a worker count >= 1 or a range [min, max] with 1 <= min <= max, "
            f"got {workers!r}",
        )
        _require(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
        _require(bool(self.accelerator_resource), "scaling.accelerator_resource",
                 "must name a Ray resource, e.g. GPU")  # fmt: skip
        _at_least("scaling", self, -1, "max_failures")
        _at_least("scaling", self, 0, "elastic_resize_monitor_interval_s")
        _require(self.elastic_start_timeout_s > 0, "scaling.elastic_start_timeout_s", "must be > 0")

    @property
    def elastic(self) -> bool:
        """Whether `num_workers` is a range [min, max] (an elastic run)."""
        return isinstance(self.num_workers, list)

    @property
    def min_workers(self) -> int:
        """The fewest workers the run trains on (`num_workers` when it is fixed)."""
        return self.num_workers[0] if isinstance(self.num_workers, list) else self.num_workers

    @property
    def max_workers(self) -> int:
        """The most workers the run trains on (`num_workers` when it is fixed)."""
        return self.num_workers[1] if isinstance(self.num_workers, list) else self.num_workers

    def describe_workers(self) -> str:
        """ "2 workers", or "1 to 4 workers" for a range."""
        if self.elastic:
            return f"{self.min_workers} to {self.max_workers} workers"
        return f"{self.num_workers} workers"

    def worker_resources(self) -> dict[str, float]:
        """Ray resources one training worker holds, e.g. {"CPU": 1.0, "GPU": 1.0}."""
        resources = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            resources["GPU"] = 1.0
        if self.use_gpu or self.accelerator_resource != "GPU":
            resources[self.accelerator_resource] = 1.0
        return resources

    def accelerator_unit(self) -> str:
        """How messages name the accelerator resource: "GPUs", or the custom one, e.g. "'accel'"."""
        return "GPUs" if self.accelerator_resource == "GPU" else repr(self.accelerator_resource)


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and sample grids."""

    tracking_uri: str = ""  # MLflow store ("": MLFLOW_TRACKING_URI if set, else ./mlflow.db)
    # Artifact root of experiments this run creates (s3://..., a folder); "": next to a SQLite
    # store, else the tracking server's default. An existing experiment keeps its own.
    artifact_location: str = ""
    experiment_name: str = "pixelrnn"  # MLflow experiment; also the prefix of generated run names
    sample_every_epochs: int = 0  # sample grid every N epochs (0: after the last epoch only)
    num_samples: int = 16  # images per sample grid (0: no sample grids)
    sample_temperature: float = 1.0  # softmax temperature of those samples (1: the model's own)
    system_metrics: bool = True  # log CPU, memory, disk and GPU use of the driver's node
    registered_model_name: str = ""  # also register the best model under this name ("": don't)

    def __post_init__(self) -> None:
        _require(bool(self.experiment_name), "tracking.experiment_name", "must not be empty")
        _at_least("tracking", self, 0, "sample_every_epochs", "num_samples")
        _require(self.sample_temperature > 0, "tracking.sample_temperature", "must be > 0")


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune sweeps (`pixelrnn tune`): the search, ASHA early stopping, trial sizing."""

    space: str = ""  # a search space in tune_spaces.SPACES (the CLI's --space)
    num_samples: int = 8  # trials drawn from the space
    seed: int = 0  # seed of the random search: the same seed draws the same trials
    metric: str = "val/bits_per_dim"  # what ASHA and the best trial are judged by
    mode: str = "min"  # "min" or "max": whether a lower or a higher metric is better
    grace_period_epochs: int = 1  # ASHA stops no trial before this many epochs
    reduction_factor: int = 2  # each ASHA rung keeps the best 1/reduction_factor of trials
    max_concurrent_trials: int = 0  # 0: as many as the cluster's CPUs (and GPUs) hold
    trial_driver_cpus: float = 1.0  # each trial's driver, which builds and fits a TorchTrainer
    data_cpus: float = 1.0  # CPUs left free per trial for Ray Data's read tasks
    sweep_name: str = ""  # folder under train.storage_path ("": experiment name + start time)

    def __post_init__(self) -> None:
        _require(self.mode in ("min", "max"), "tune.mode", f"expected min or max: {self.mode!r}")
        _require(bool(self.metric), "tune.metric", "must not be empty")
        _at_least("tune", self, 1, "num_samples", "grace_period_epochs")
        _at_least("tune", self, 2, "reduction_factor")
        _at_least("tune", self, 0, "max_concurrent_trials", "trial_driver_cpus", "data_cpus")
        _require("/" not in self.sweep_name, "tune.sweep_name", "must not contain '/'")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one training run needs; `preset` names the model size it starts from."""

    preset: str = ""  # model size to start from, a name in pixelrnn_model.PRESETS ("": none)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        batch, scaling = self.train.batch_size, self.scaling
        if scaling.elastic:
            _require(
                batch >= scaling.max_workers,
                "train.batch_size",
                f"{batch} images per step leave some of up to {scaling.max_workers} workers "
                f"(scaling.num_workers={scaling.num_workers}) without an image; use at least "
                f"{scaling.max_workers}",
            )
        else:
            _require(
                batch % scaling.num_workers == 0,
                "train.batch_size",
                f"{batch} images per step cannot be split evenly over scaling.num_workers="
                f"{scaling.num_workers} workers; use a multiple of the worker count",
            )
        anneal, budget = self.optim.anneal_minutes, self.train.max_minutes
        _require(
            not anneal or 0 < anneal <= budget,
            "optim.anneal_minutes",
            f"must be at most train.max_minutes ({budget:g}; 0 means no budget), got {anneal:g}",
        )

    @property
    def batch_size_per_worker(self) -> int:
        """Images each worker trains on per optimizer step (its share of `train.batch_size`);
        with a range of worker counts, the most any worker trains on (at the minimum count)."""
        return math.ceil(self.train.batch_size / self.scaling.min_workers)

    def describe_batch_per_worker(self) -> str:
        """`batch_size_per_worker` as text; "4-8" (fewest-most) for a range of worker counts."""
        fewest = self.train.batch_size // self.scaling.max_workers
        most = self.batch_size_per_worker
        return str(most) if fewest == most else f"{fewest}-{most}"

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a nested (or dotted) dict, as crossing into Ray or loaded from YAML."""
        return merge([flatten(config)])

    @classmethod
    def from_stored(cls, config: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a config an earlier version saved (a checkpoint, a weights file, a run
        record): `train.batch_size_per_worker` becomes `train.batch_size`, times the workers."""
        flat = flatten(config)
        per_worker = flat.pop("train.batch_size_per_worker", None)
        if per_worker is not None:
            workers = flat.get("scaling.num_workers", ScalingConfig().num_workers)
            flat["train.batch_size"] = per_worker * workers
        return merge([flat])

    def to_dict(self) -> dict[str, Any]:
        """The nested dict of plain values that `from_dict` turns back into this config."""
        return dataclasses.asdict(self)

    def to_flat(self) -> dict[str, Any]:
        """Dotted keys to values: the MLflow params and the keys `--set` accepts."""
        return flatten(self.to_dict())


# Keys that existed once: using one is an error that says what replaced it.
REMOVED_KEYS = {
    "train.batch_size_per_worker": "train.batch_size_per_worker was removed: set train.batch_size, "
    "the global batch over all workers (the old value times scaling.num_workers)",
}

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
    if key in REMOVED_KEYS:
        raise ConfigError(REMOVED_KEYS[key])
    if key not in types:
        if key in SECTIONS:
            raise ConfigError(f"{key}: is a section; give a mapping of its keys")
        close = difflib.get_close_matches(key, list(types), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key '{key}'{hint}")
    expected = types[key]
    if expected == int | list[int]:
        return _count_or_range(key, value)
    if isinstance(value, str) and expected is not str:
        return _parse(key, value, expected)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not expected:
        raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r}")
    return value


def _count_or_range(key: str, value: Any) -> int | list[int]:
    """A count (3) or a range ([1, 4]); from the CLI "3", "[1,4]" or "1,4" ("[min, max]")."""
    if isinstance(value, str):
        text = value.strip()
        with contextlib.suppress(yaml.YAMLError):
            value = yaml.safe_load(f"[{text}]" if "," in text and "[" not in text else text)
    if isinstance(value, tuple):
        value = list(value)
    if type(value) is int or (isinstance(value, list) and all(type(item) is int for item in value)):
        return value
    raise ConfigError(f"{key}: expected an int or a range [min, max] of ints, got {value!r}")


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
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    """An experiment file's text (read from `where`) as a flat dotted dict of its deltas."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML ({str(error).splitlines()[0]})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys at the top level")
    return flatten(loaded)


def load_config(
    path: str | Path | None, overrides: Iterable[str] = (), text: str | None = None
) -> ExperimentConfig:
    """An experiment file (None: defaults only) with `--set` overrides applied on top.

    Args:
        path: the file, or where `text` was read from.
        overrides: `dotted.key=value` items.
        text: the file's contents when the caller read it (from a URI); else `path` is read.
    """
    layers = []
    if text is not None:
        layers = [parse_yaml(text, str(path))]
    elif path is not None:
        layers = [read_yaml(path)]
    return merge([*layers, parse_overrides(overrides)])


def changed_keys(before: ExperimentConfig, after: ExperimentConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    old, new = before.to_flat(), after.to_flat()
    return sorted(key for key in new if old.get(key) != new[key])
