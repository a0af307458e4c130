"""Mid-epoch checkpoints in the pure-torch loop: resuming at the recorded batch retraces the run."""

from __future__ import annotations

import pytest
import torch

from pipeline.checkpointing import Progress, restore, save_checkpoint
from pipeline.config import ExperimentConfig, merge
from pipeline.engine import EPOCH_IMAGES, learning_rate, make_optimizer, train_epoch
from pixelrnn_model import PixelRNN

pytestmark = pytest.mark.usefixtures("one_thread")
BATCHES, STEPS_PER_EPOCH = 6, 6


def config() -> ExperimentConfig:
    return merge([{"model.num_layers": 1, "model.hidden_channels": 6, "model.head_channels": 6,
                   "optim.warmup_steps": 2, "optim.lr": 3e-3}])  # fmt: skip


def batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(0, 256, (2, 3, 4, 4), generator=generator) for _ in range(BATCHES)]


def fresh(cfg: ExperimentConfig):
    torch.manual_seed(0)
    model = PixelRNN(cfg.model)
    return model, make_optimizer(model.parameters(), cfg.optim)


def run(cfg, model, optimizer, data, start_step=0, start_batch=0, **hooks):
    def schedule(step):
        return learning_rate(step, cfg.optim, 2 * STEPS_PER_EPOCH, STEPS_PER_EPOCH)

    return train_epoch(model, optimizer, data, cfg.optim, schedule, start_step,
                       max_steps=STEPS_PER_EPOCH, start_batch=start_batch, **hooks)  # fmt: skip


def test_resuming_at_the_checkpointed_batch_gives_identical_parameters(tmp_path):
    cfg, data = config(), batches()
    model, optimizer = fresh(cfg)
    run(cfg, model, optimizer, data)
    _, expected = run(cfg, model, optimizer, data, start_step=STEPS_PER_EPOCH)  # a second epoch
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer = fresh(cfg)
    run(cfg, model, optimizer, data)
    saved: list[tuple[int, int]] = []

    def checkpoint(step: int, batches_done: int, meters: tuple) -> None:
        if not saved:  # the first one only: later ones would overwrite it
            progress = Progress(epoch=1, step=step, samples_in_epoch=batches_done * 2,
                                meters=meters)  # fmt: skip
            save_checkpoint(tmp_path, model, optimizer, progress, cfg)
            saved.append((step, batches_done))

    due = iter([False, True] + [True] * BATCHES)  # due after the epoch's second batch
    run(
        cfg,
        model,
        optimizer,
        data[:4],
        start_step=STEPS_PER_EPOCH,
        on_checkpoint=checkpoint,
        checkpoint_due=lambda: next(due),
    )  # interrupted after 4
    assert saved == [(STEPS_PER_EPOCH + 2, 2)]

    model, optimizer = fresh(cfg)  # a new process: nothing but the checkpoint survives
    progress = restore(tmp_path, model, optimizer)
    assert (progress.epoch, progress.step, progress.samples_in_epoch) == (1, 8, 4)
    done = progress.samples_in_epoch // 2  # global batches of 2 images
    step, metrics = run(cfg, model, optimizer, data[done:], start_step=progress.step,
                        start_batch=done, meters=progress.meters)  # fmt: skip
    assert step == 2 * STEPS_PER_EPOCH
    for key, value in model.state_dict().items():
        assert torch.equal(value, uninterrupted[key]), key
    for key in ("train/bits_per_dim", "train/nll_nats", "train/grad_norm", "train/lr"):
        assert metrics[key] == pytest.approx(expected[key], rel=1e-12), key  # the whole epoch
    assert metrics[EPOCH_IMAGES] == expected[EPOCH_IMAGES] == BATCHES * 2  # each image once


def test_no_mid_epoch_checkpoint_after_the_epochs_last_batch():
    cfg, data = config(), batches()
    model, optimizer = fresh(cfg)
    taken: list[int] = []
    run(
        cfg,
        model,
        optimizer,
        data,
        start_batch=3,
        on_checkpoint=lambda step, done, meters: taken.append(done),
        checkpoint_due=lambda: True,
    )
    assert taken == [4, 5]  # batches 3, 4, 5 trained; none after the last (the epoch end's)
