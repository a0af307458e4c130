"""Pure-PyTorch training and evaluation steps: optimizer, schedule, clipping, bits/dim.

Section 5 of van den Oord et al. (2016): RMSProp, negative log-likelihood in bits per sub-pixel
(nats per image for binarized data). Works unchanged in one process or under DDP: cross-rank
sums go through `torch.distributed` only when a process group exists. (Over 400 lines: the step,
the epoch loop and the two clocks every rank must agree on, time budget and mid-epoch
checkpoints, share the same collectives.)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pipeline.config import OptimConfig
from pipeline.errors import PixelRNNError
from pixelrnn_model import nll_nats

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0  # how often the logging rank prints a running training loss
# In `train_epoch`'s reports: images trained on in the epoch so far by all ranks, counted step by
# step (those before a mid-epoch checkpoint carried in its meters)
EPOCH_IMAGES = "train/epoch_images"


class NonFiniteLossError(PixelRNNError):
    """The loss or gradient norm became NaN/inf; the step was not applied."""


def make_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """RMSProp (the paper's choice) or Adam, at the schedule's starting learning rate."""
    start_lr = learning_rate(0, cfg, total_steps=1, steps_per_epoch=1)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=start_lr, alpha=cfg.rmsprop_alpha, eps=cfg.eps,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        )  # fmt: skip
    return torch.optim.Adam(
        params, lr=start_lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )  # fmt: skip


def learning_rate(step: int, cfg: OptimConfig, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then decay.

    Args:
        step: optimizer steps taken so far.
        cfg: peak rate, warm-up length and decay kind.
        total_steps: steps in the whole run (the cosine schedule ends there).
        steps_per_epoch: steps in one epoch (the exponential schedule decays per epoch).
    """
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    after_warmup = max(0, step - cfg.warmup_steps)
    if cfg.schedule == "cosine":
        progress = min(1.0, after_warmup / max(1, total_steps - cfg.warmup_steps))
        decay = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.schedule == "exponential":
        decay = cfg.decay_rate ** (after_warmup / max(1, steps_per_epoch))
    else:
        decay = 1.0
    return cfg.lr * warmup * decay


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Apply `lr` to every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum a tensor over DDP ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class TimeBudget:
    """A wall-clock budget for the training loop that every DDP rank agrees on.

    Each rank reads its own clock; `spent()` all-reduces the verdict, so all ranks stop after
    the same optimizer step (a rank that stopped alone would hang the others' gradient sync).
    The same collective averages the ranks' clocks into `agreed_seconds`, which the time-based
    learning-rate anneal reads, so every rank applies the same rate.
    """

    def __init__(self, minutes: float, seconds_before: float, device: torch.device):
        """`minutes` 0 means no budget; `seconds_before` were spent by earlier attempts."""
        self.limit_s = minutes * 60.0
        self.seconds_before = seconds_before
        self.device = device
        self.started = time.monotonic()
        self.over = False
        self.agreed_seconds = seconds_before

    def seconds(self) -> float:
        """Wall-clock seconds spent by the training loop, earlier attempts included."""
        return self.seconds_before + time.monotonic() - self.started

    def spent(self) -> bool:
        """Whether the budget is used up on any rank (collective: call it on every rank)."""
        if not self.limit_s or self.over:
            return self.over
        seconds = self.seconds()
        local = torch.tensor(
            [float(seconds >= self.limit_s), seconds], dtype=torch.float64, device=self.device
        )
        over, total_seconds = all_reduce_sum(local).tolist()
        world = world_size()
        self.over, self.agreed_seconds = over > 0, total_seconds / world
        return self.over

    def anneal_factor(self, minutes: float, floor: float) -> float:
        """Learning-rate factor over the budget's last `minutes`: 1 before them, then a cosine
        from 1 to `floor` at the end of the budget, read at the last `spent()` (same on all
        ranks). 1 when there is no budget or `minutes` is 0."""
        if not self.limit_s or not minutes:
            return 1.0
        start = self.limit_s - minutes * 60.0
        progress = min(1.0, max(0.0, (self.agreed_seconds - start) / (minutes * 60.0)))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class StepResult:
    """One optimizer step: summed nats of its images, image and sub-pixel counts, grad norm."""

    nats: float
    images: int
    subpixels: int
    grad_norm: float


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether `train.precision` means bf16 autocast on `device` (see TrainConfig.precision)."""
    if precision == "auto":
        return device.type == "cuda" and native_bf16(device)
    return precision == "bf16" and native_bf16(device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a bf16-capable GPU, or a CPU with AVX-512 BF16
    or AMX (elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast(pixels: Tensor, enabled: bool):
    return torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=enabled)


def world_size() -> int:
    """DDP ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def batch_share(images: int, global_batch: int) -> float:
    """This rank's weight in the global batch mean: its `images` over an even share.

    DDP averages the ranks' gradients, which is the global batch's mean gradient only when every
    rank holds global_batch / world images. A rank holding more (or fewer; shares of a batch
    that the worker count does not divide differ by one image) scales its mean loss by this, so
    the average stays the global mean. 1.0 when `global_batch` is 0 (even shares assumed).
    """
    if not global_batch:
        return 1.0
    return images * world_size() / global_batch


def train_step(
    model: nn.Module,
    pixels: Tensor,
    optimizer: torch.optim.Optimizer,
    cfg: OptimConfig,
    bf16: bool = False,
    global_batch: int = 0,
) -> StepResult:
    """One step on bits/dim with gradient clipping; skipped if anything is non-finite.

    Args:
        model: a PixelRNN, possibly DDP-wrapped (gradients are then averaged over ranks).
        pixels: int64 (B, C, H, W) in [0, levels): this rank's share of the global batch.
        optimizer: from `make_optimizer`.
        cfg: gradient clipping threshold.
        bf16: run the forward pass under bf16 autocast (the loss stays float32).
        global_batch: images in this step over all ranks, when the ranks' shares may differ
            (0: every rank holds the same number).

    Raises:
        NonFiniteLossError: on any rank's NaN/inf loss or gradient norm; no rank steps then.
    """
    model.train()
    with _autocast(pixels, bf16):
        logits = model(pixels)  # (B, levels, C, H, W)
    nats = nll_nats(logits, pixels)  # (B,)
    loss = nats.mean() / (pixels[0].numel() * math.log(2.0))  # bits/dim
    share = batch_share(pixels.shape[0], global_batch)
    optimizer.zero_grad(set_to_none=True)
    (loss if share == 1.0 else loss * share).backward()
    max_norm = cfg.grad_clip_norm if cfg.grad_clip_norm > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
    ranks_diverged = all_reduce_sum((~finite).to(torch.float32))  # the same on every rank
    # One host sync per step for the decision and both logged numbers.
    diverged, nats_sum, norm = torch.stack(
        [ranks_diverged, nats.detach().sum(), grad_norm]
    ).tolist()
    if diverged:
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(
            f"non-finite training loss (bits/dim {loss.item():.4g}, grad norm {norm:.4g}); "
            "try a lower optim.lr or optim.grad_clip_norm"
        )
    optimizer.step()
    return StepResult(nats_sum, pixels.shape[0], pixels.numel(), norm)


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Tensor], max_batches: int = 0, bf16: bool = False
) -> dict[str, float]:
    """Bits/dim and nats/image over `batches`, summed across DDP ranks.

    Args:
        model: an unwrapped PixelRNN (no DDP: evaluation needs no gradient sync).
        batches: int64 (B, C, H, W) pixel batches.
        max_batches: stop after this many batches per rank (0: all).
        bf16: bf16 autocast for the forward pass.

    Returns:
        {"bits_per_dim", "nll_nats"}: means over every image seen by every rank.
    """
    was_training = model.training
    model.eval()
    local = [0.0, 0, 0]  # nats, images, sub-pixels
    for index, pixels in enumerate(batches):
        if max_batches and index >= max_batches:
            break
        with _autocast(pixels, bf16):
            logits = model(pixels)  # (B, levels, C, H, W)
        local = [local[0] + nll_nats(logits, pixels).sum().item(),
                 local[1] + pixels.shape[0], local[2] + pixels.numel()]  # fmt: skip
    model.train(was_training)
    device = next(model.parameters()).device
    totals = torch.tensor(local, dtype=torch.float64, device=device)
    nats_sum, images, subpixels = all_reduce_sum(totals).tolist()
    if not images:
        raise PixelRNNError("evaluation saw no images: the split is empty")
    return {
        "bits_per_dim": nats_sum / (subpixels * math.log(2.0)),
        "nll_nats": nats_sum / images,
    }


@dataclass
class TrainMeter:
    """Accumulates step results between two reports.

    A meter restored from a mid-epoch checkpoint starts from totals over all ranks
    (`carrying`); its `carried_images` stay out of the throughput of this attempt.
    """

    nats: float = 0.0
    images: int = 0
    subpixels: int = 0
    steps: int = 0
    grad_norm_sum: float = 0.0
    carried_images: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, result: StepResult) -> None:
        """Count one step."""
        self.nats += result.nats
        self.images += result.images
        self.subpixels += result.subpixels
        self.steps += 1
        self.grad_norm_sum += result.grad_norm

    @property
    def bits_per_dim(self) -> float:
        """This rank's mean training bits/dim so far."""
        return self.nats / max(self.subpixels, 1) / math.log(2.0)

    def _reduced(self, device: torch.device | str) -> list[float]:
        local = [self.nats, self.images, self.subpixels, self.grad_norm_sum, self.steps,
                 self.images - self.carried_images]  # fmt: skip
        return all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=device)).tolist()

    def totals(self, device: torch.device | str = "cpu") -> list[float]:
        """[nats, images, sub-pixels, grad norm sum, steps] over all ranks (a collective)."""
        return self._reduced(device)[:5]

    @classmethod
    def carrying(cls, totals: list[float] | tuple[float, ...]) -> TrainMeter:
        """A meter that starts from `totals()` of an earlier attempt (empty: from zero)."""
        if not totals:
            return cls()
        nats, images, subpixels, grad_norm_sum, steps = totals
        return cls(nats, int(images), int(subpixels), int(steps), grad_norm_sum, int(images))

    def summary(self, lr: float, device: torch.device | str = "cpu") -> dict[str, float]:
        """Metrics over all ranks since the last reset (a collective under DDP)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        nats, images, subpixels, grad_norm_sum, steps, new_images = self._reduced(device)
        return {
            "train/bits_per_dim": nats / max(subpixels, 1) / math.log(2.0),
            "train/nll_nats": nats / max(images, 1),
            "train/grad_norm": grad_norm_sum / max(steps, 1),
            "train/lr": lr,
            "throughput/images_per_s": new_images / elapsed,
        }


class CheckpointTimer:
    """Says when a mid-epoch checkpoint is due, the same on every DDP rank.

    Every `minutes` of wall clock (0: never). Each rank reads its own clock and `due()`
    all-reduces the verdict, so all ranks checkpoint (and report) after the same step.
    """

    def __init__(self, minutes: float, device: torch.device):
        self.interval_s = minutes * 60.0
        self.device = device
        self.restart()

    def restart(self) -> None:
        """Count the interval from now (after any checkpoint)."""
        self.last = time.monotonic()

    def due(self) -> bool:
        """Whether the interval has passed on any rank (collective: call it on every rank)."""
        if not self.interval_s:
            return False
        late = float(time.monotonic() - self.last >= self.interval_s)
        if not all_reduce_sum(torch.tensor([late], dtype=torch.float64, device=self.device)):
            return False
        self.restart()
        return True


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Tensor],
    cfg: OptimConfig,
    schedule: Callable[[int], float],
    start_step: int,
    max_steps: int = 0,
    report_every: int = 0,
    on_report: Callable[[int, dict[str, float]], None] | None = None,
    bf16: bool = False,
    log_progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    start_batch: int = 0,
    meters: tuple[float, ...] = (),
    on_checkpoint: Callable[[int, int, tuple[float, ...]], None] | None = None,
    checkpoint_due: Callable[[], bool] | None = None,
    global_batch: int = 0,
) -> tuple[int, dict[str, float]]:
    """Train over `batches` once, setting the scheduled learning rate before every step.

    Args:
        model, optimizer, cfg, bf16: as for `train_step`.
        batches: int64 (B, C, H, W) pixel batches: the epoch's batches from `start_batch` on.
        schedule: optimizer step -> learning rate.
        start_step: optimizer steps taken before the first of `batches`.
        max_steps: end the epoch at this many batches, those before `start_batch` included
            (0: all batches).
        report_every: call `on_report(step, metrics)` after every this many batches of the
            epoch (0: never).
        log_progress: log a running loss every `PROGRESS_EVERY_S` seconds.
        should_stop: asked before every step but the first; True ends the epoch there (a spent
            time budget).
        start_batch: batches of this epoch trained before (a run resumed mid-epoch).
        meters: with `start_batch`, the epoch's and the report interval's `TrainMeter.totals()`
            at that point (10 numbers; give them on one rank only, as they are over all ranks).
        on_checkpoint: called as `on_checkpoint(step, batches done in the epoch, meters)` on
            every rank after a step for which `checkpoint_due()` (asked after every step but
            the epoch's last) is True.
        global_batch: as for `train_step` (0: even shares).

    Returns:
        (optimizer steps taken in total, the epoch's metrics over all ranks). Those metrics and
        the interim reports' hold `EPOCH_IMAGES`.
    """
    device = next(model.parameters()).device
    step, lr, last_log = start_step, schedule(start_step), time.perf_counter()
    epoch_meter, interval_meter = TrainMeter(), TrainMeter()
    for position, pixels in enumerate(batches, start=start_batch):
        first = position == start_batch
        if max_steps and position >= max_steps:
            break
        if not first and should_stop is not None and should_stop():  # every epoch takes a step
            break
        if first:  # throughput counts from the first batch, not the pipeline's start-up
            epoch_meter = TrainMeter.carrying(meters[:5])
            interval_meter = TrainMeter.carrying(meters[5:])
        lr = schedule(step)
        set_learning_rate(optimizer, lr)
        result = train_step(model, pixels, optimizer, cfg, bf16, global_batch)
        epoch_meter.add(result)
        interval_meter.add(result)
        step += 1
        if report_every and on_report is not None and (position + 1) % report_every == 0:
            epoch_images = epoch_meter.totals(device)[1]
            on_report(step, {**interval_meter.summary(lr, device), EPOCH_IMAGES: epoch_images})
            interval_meter = TrainMeter()
        last = bool(max_steps) and position + 1 >= max_steps
        if on_checkpoint and checkpoint_due and not last and checkpoint_due():
            state = (*epoch_meter.totals(device), *interval_meter.totals(device))
            on_checkpoint(step, position + 1, state)
        if log_progress and time.perf_counter() - last_log > PROGRESS_EVERY_S:
            last_log = time.perf_counter()
            logger.info("step %d: %.4f bits/dim (epoch so far)", step, epoch_meter.bits_per_dim)
    return step, {**epoch_meter.summary(lr, device), EPOCH_IMAGES: epoch_meter.totals(device)[1]}


def center_crop(pixels: Tensor, size: int) -> Tensor:
    """(B, C, H, W) -> (B, C, size, size) from the middle; size 0 returns the input."""
    if not size:
        return pixels
    H, W = pixels.shape[-2:]
    if size > min(H, W):
        raise PixelRNNError(f"data.crop_size={size} is larger than the {H}x{W} images")
    top, left = (H - size) // 2, (W - size) // 2
    return pixels[..., top : top + size, left : left + size]  # (B, C, size, size)


def pixel_batches(batches: Iterable[dict], crop_size: int = 0) -> Iterator[Tensor]:
    """Ray Data / loader batches {"pixels": uint8 (B, C, H, W)} -> int64 model input."""
    for batch in batches:
        yield center_crop(batch["pixels"], crop_size).long()


def worker_seed(seed: int, rank: int, epoch: int) -> int:
    """A distinct, reproducible seed for each (worker, epoch)."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2**63)
