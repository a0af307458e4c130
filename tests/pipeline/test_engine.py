"""engine.py in plain torch: optimizers, schedule, steps, clipping, evaluation, divergence."""

from __future__ import annotations

import math
import time

import pytest
import torch

from pipeline.config import OptimConfig
from pipeline.engine import (
    EPOCH_IMAGES,
    NonFiniteLossError,
    TimeBudget,
    center_crop,
    evaluate,
    learning_rate,
    make_optimizer,
    pixel_batches,
    train_epoch,
    train_step,
)
from pipeline.errors import PixelRNNError
from pixelrnn_model import ModelConfig, PixelRNN, bits_per_dim, nll_nats

TINY = ModelConfig(num_layers=2, hidden_channels=12, head_channels=12)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model() -> PixelRNN:
    torch.manual_seed(0)
    return PixelRNN(TINY)


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(1))


def test_optimizers_follow_the_config(model):
    rmsprop = make_optimizer(model.parameters(), OptimConfig(momentum=0.5, rmsprop_alpha=0.9))
    assert isinstance(rmsprop, torch.optim.RMSprop)
    assert (rmsprop.defaults["momentum"], rmsprop.defaults["alpha"]) == (0.5, 0.9)
    adam = make_optimizer(model.parameters(), OptimConfig(optimizer="adam", beta1=0.8))
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["betas"] == (0.8, 0.999)


def test_learning_rate_schedules():
    warm = OptimConfig(lr=1.0, warmup_steps=4, schedule="constant")
    assert [learning_rate(s, warm, 100, 10) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = OptimConfig(lr=1.0, schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(0, cosine, 100, 10) == pytest.approx(1.0)
    assert learning_rate(50, cosine, 100, 10) == pytest.approx(0.55)
    assert learning_rate(100, cosine, 100, 10) == pytest.approx(0.1)
    exponential = OptimConfig(lr=1.0, schedule="exponential", decay_rate=0.5)
    assert learning_rate(20, exponential, 100, 10) == pytest.approx(0.25)


def test_train_step_lowers_the_loss(model, pixels):
    cfg = OptimConfig(optimizer="adam", lr=1e-2, grad_clip_norm=0.0)
    optimizer = make_optimizer(model.parameters(), cfg)
    before = bits_per_dim(model(pixels), pixels).item()
    results = [train_step(model, pixels, optimizer, cfg) for _ in range(20)]
    after = bits_per_dim(model(pixels), pixels).item()
    assert after < before - 0.5
    first = results[0]
    assert (first.images, first.subpixels) == (4, 4 * 3 * 8 * 8)
    assert first.nats / first.subpixels / math.log(2) == pytest.approx(before, rel=1e-4)


def test_gradients_are_clipped_and_the_unclipped_norm_reported(model, pixels):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = train_step(model, pixels, optimizer, OptimConfig(grad_clip_norm=1e-3))
    clipped = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
    )
    assert result.grad_norm > 1e-2
    assert clipped.item() == pytest.approx(1e-3, rel=1e-3)


def test_non_finite_loss_raises_and_leaves_the_weights_alone(model, pixels):
    optimizer = make_optimizer(model.parameters(), OptimConfig())
    with torch.no_grad():
        model.head_output.bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        train_step(model, pixels, optimizer, OptimConfig())
    after = model.state_dict()
    assert all(torch.allclose(before[k], after[k], equal_nan=True) for k in before)
    assert not optimizer.state  # the optimizer never stepped


def test_evaluate_matches_the_likelihood_and_counts_every_image(model, pixels):
    batches = [pixels[:3], pixels[3:]]
    metrics = evaluate(model, batches)
    with torch.no_grad():
        nats = nll_nats(model(pixels), pixels)
    assert metrics["nll_nats"] == pytest.approx(nats.mean().item(), rel=1e-5)
    expected = nats.sum().item() / (pixels.numel() * math.log(2))
    assert metrics["bits_per_dim"] == pytest.approx(expected, rel=1e-5)
    first_only = evaluate(model, batches, max_batches=1)
    assert first_only["nll_nats"] == pytest.approx(nats[:3].mean().item(), rel=1e-5)
    assert model.training  # restored


def test_train_epoch_reports_and_stops_at_max_steps(model, pixels):
    optimizer = make_optimizer(model.parameters(), OptimConfig())
    reports = []
    step, metrics = train_epoch(
        model, optimizer, [pixels] * 10, OptimConfig(), schedule=lambda s: 1e-3 / (s + 1),
        start_step=7, max_steps=5, report_every=2, on_report=lambda s, m: reports.append(s),
    )  # fmt: skip
    assert step == 12
    assert reports == [9, 11]
    assert metrics["train/lr"] == pytest.approx(1e-3 / 12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 12)
    assert set(metrics) == {"train/bits_per_dim", "train/nll_nats", "train/grad_norm",
                            "train/lr", "throughput/images_per_s", EPOCH_IMAGES}  # fmt: skip
    assert metrics[EPOCH_IMAGES] == 5 * 4  # 5 steps of 4 images, counted


def test_train_epoch_stops_when_asked_before_a_step(model, pixels):
    optimizer = make_optimizer(model.parameters(), OptimConfig())
    asked = []

    def stop_after_three() -> bool:
        asked.append(len(asked))
        return len(asked) > 3

    step, metrics = train_epoch(
        model, optimizer, [pixels] * 10, OptimConfig(), schedule=lambda s: 1e-3, start_step=0,
        should_stop=stop_after_three,
    )  # fmt: skip
    assert step == 4 and len(asked) == 4  # not asked before the epoch's first step
    assert metrics["train/nll_nats"] > 0


def test_time_budget_counts_earlier_attempts_and_stays_spent():
    assert not TimeBudget(0.0, 1e9, torch.device("cpu")).spent()  # 0: no budget at all
    fresh = TimeBudget(1.0, 0.0, torch.device("cpu"))
    assert not fresh.spent() and fresh.seconds() < 60
    resumed = TimeBudget(1.0, 59.999, torch.device("cpu"))
    time.sleep(0.01)
    assert resumed.spent() and resumed.over
    resumed.seconds_before = 0.0  # once every rank agreed it is spent, it stays spent
    assert resumed.spent()


def test_time_budget_anneals_the_learning_rate_over_its_last_minutes():
    cpu = torch.device("cpu")
    # 10-minute budget, anneal over the last 2: factor 1 until minute 8, then a cosine to floor
    assert TimeBudget(10.0, 0.0, cpu).anneal_factor(2.0, 0.1) == 1.0
    assert TimeBudget(0.0, 1e9, cpu).anneal_factor(2.0, 0.1) == 1.0  # no budget: no anneal
    for minute, expected in ((7.9, 1.0), (9.0, 0.55), (9.5, 0.1 + 0.9 * 0.5 * (1 - 0.5**0.5))):
        budget = TimeBudget(10.0, minute * 60.0, cpu)
        assert not budget.spent()
        assert budget.anneal_factor(2.0, 0.1) == pytest.approx(expected, abs=1e-3)
        assert budget.anneal_factor(0.0, 0.1) == 1.0
    ended = TimeBudget(10.0, 600.0, cpu)
    assert ended.spent() and ended.anneal_factor(2.0, 0.1) == pytest.approx(0.1)


def test_center_crop_and_pixel_batches():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).reshape(2, 3, 6, 6)
    (cropped,) = pixel_batches([{"pixels": images, "label": torch.zeros(2)}], crop_size=4)
    assert cropped.dtype == torch.int64
    assert torch.equal(cropped, images[:, :, 1:5, 1:5].long())
    assert center_crop(images, 0) is images
    with pytest.raises(PixelRNNError, match="crop_size=8 is larger"):
        center_crop(images, 8)


def test_precision_auto_means_bf16_on_gpu_only_and_bf16_needs_native_support():
    from pipeline.engine import native_bf16, use_bf16

    cpu = torch.device("cpu")
    assert use_bf16("auto", cpu) is False
    assert use_bf16("fp32", cpu) is False
    assert use_bf16("bf16", cpu) is native_bf16(cpu)


def _uneven_rank(rank: int, init_file: str, pixels, state, out: str) -> None:
    """One of 2 gloo DDP ranks: rank 0 trains on 3 of the 5 images, rank 1 on the other 2, once
    weighted by share (global_batch=5) and once not (0); rank 0 saves both gradients to `out`
    (a file: tensors sent through a queue are shared by file descriptors, which a child that has
    exited can no longer hand over)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        grads = {}
        for global_batch in (5, 0):
            model = PixelRNN(TINY)
            model.load_state_dict(state)
            ddp = DistributedDataParallel(model)
            cfg = OptimConfig(optimizer="rmsprop", lr=1e-3, grad_clip_norm=0.0)
            share = pixels[:3] if rank == 0 else pixels[3:]  # (3 | 2, C, H, W)
            train_step(ddp, share, make_optimizer(ddp.parameters(), cfg), cfg,
                       global_batch=global_batch)  # fmt: skip
            grads[global_batch] = {name: p.grad.clone() for name, p in model.named_parameters()}
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


def test_uneven_shares_weighted_by_size_give_the_global_batch_gradient(model, tmp_path):
    pixels = torch.randint(0, 256, (5, 3, 8, 8), generator=torch.Generator().manual_seed(2))
    state = {name: value.clone() for name, value in model.state_dict().items()}
    cfg = OptimConfig(optimizer="rmsprop", lr=1e-3, grad_clip_norm=0.0)
    train_step(model, pixels, make_optimizer(model.parameters(), cfg), cfg)  # one process, all 5
    want = {name: p.grad for name, p in model.named_parameters()}

    # spawn, not fork: a forked child cannot run backward once the parent's autograd has threads
    context = torch.multiprocessing.get_context("spawn")
    out = tmp_path / "grads.pt"
    ranks = [context.Process(target=_uneven_rank,
                             args=(rank, str(tmp_path / "init"), pixels, state, str(out)))
             for rank in range(2)]  # fmt: skip
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=180)
        assert process.exitcode == 0
    grads = torch.load(out)
    for name, grad in want.items():
        torch.testing.assert_close(grads[5][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    unweighted = grads[0]  # each rank's mean weighs 1/2: a mean of the means, not the batch's
    assert not all(torch.allclose(unweighted[name], grad, rtol=1e-3) for name, grad in want.items())
