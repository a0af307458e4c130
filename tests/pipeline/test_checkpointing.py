"""Checkpoints: atomic writes, identical predictions after a round trip, safe loading."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from pipeline.checkpointing import (
    CHECKPOINT_FILE,
    Progress,
    load_checkpoint,
    model_from_checkpoint,
    restore,
    save_checkpoint,
    unwrap,
)
from pipeline.config import OptimConfig, merge
from pipeline.engine import make_optimizer, train_step
from pipeline.errors import PixelRNNError
from pixelrnn_model import PixelRNN

CFG = merge([{"model.num_layers": 2, "model.hidden_channels": 12, "model.head_channels": 12}])


pytestmark = pytest.mark.usefixtures("one_thread")


def trained(steps: int = 2):
    torch.manual_seed(0)
    model = PixelRNN(CFG.model)
    optimizer = make_optimizer(model.parameters(), CFG.optim)
    pixels = torch.randint(0, 256, (2, 3, 8, 8))
    for _ in range(steps):
        train_step(model, pixels, optimizer, OptimConfig())
    return model, optimizer, pixels


def test_round_trip_restores_identical_predictions_optimizer_and_rng(tmp_path):
    model, optimizer, pixels = trained()
    path = save_checkpoint(
        tmp_path, model, optimizer, Progress(3, 17, 95.5, True), CFG, {"val/x": 1.5}, (3, 8, 8)
    )
    assert path == tmp_path / CHECKPOINT_FILE
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # no partial file left
    expected_random = torch.rand(3)

    torch.manual_seed(123)
    fresh = PixelRNN(CFG.model)
    fresh_optimizer = make_optimizer(fresh.parameters(), CFG.optim)
    progress = restore(tmp_path, fresh, fresh_optimizer)
    assert progress == Progress(epoch=3, step=17, seconds=95.5, budget_spent=True)
    assert torch.rand(3).equal(expected_random)
    with torch.no_grad():
        assert torch.equal(model.eval()(pixels), fresh.eval()(pixels))
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    for key, state in saved["state"].items():
        assert all(torch.equal(state[k], loaded["state"][key][k]) for k in state)

    trained_model = model_from_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert trained_model.config == CFG and trained_model.metrics == {"val/x": 1.5}
    assert trained_model.image_shape == (3, 8, 8) and not trained_model.model.training
    with torch.no_grad():
        assert torch.equal(trained_model.model(pixels), model(pixels))


def test_wrapped_models_are_saved_without_wrapper_prefixes(tmp_path):
    model, optimizer, _ = trained(steps=0)
    assert unwrap(torch.compile(model)) is model
    rendezvous = tmp_path / "rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        assert unwrap(wrapped) is model
        save_checkpoint(tmp_path, wrapped, optimizer, Progress(), CFG)
    finally:
        dist.destroy_process_group()
    keys = load_checkpoint(tmp_path)["model"].keys()
    assert not [k for k in keys if k.startswith(("module.", "_orig_mod."))]


def test_saving_again_replaces_the_checkpoint_atomically(tmp_path):
    model, optimizer, _ = trained(steps=0)
    save_checkpoint(tmp_path, model, optimizer, Progress(1, 1), CFG)
    save_checkpoint(tmp_path, model, optimizer, Progress(2, 2), CFG)
    assert load_checkpoint(tmp_path)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]


class Payload:
    """Not a tensor or container: weights_only loading must refuse it."""


def test_unsafe_missing_and_foreign_files_are_refused(tmp_path):
    torch.save({"format_version": 1, "model": Payload()}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(PixelRNNError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(PixelRNNError, match="not a pixelrnn checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(PixelRNNError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "empty")


def test_no_checkpoint_starts_fresh():
    model, optimizer, _ = trained(steps=0)
    assert restore(None, model, optimizer) == Progress(epoch=0, step=0)
