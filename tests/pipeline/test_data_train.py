"""Acceptance: a real 2-worker TorchTrainer receives each prepared image exactly once per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cli.main import main
from pipeline.data import LOCAL_SHUFFLE_BUFFER, open_prepared, read_split
from pipeline.datasets import synthetic

pytestmark = pytest.mark.ray
EPOCHS, IMAGES = 2, 60


def test_two_workers_each_image_once_per_epoch(ray_cluster, tmp_path):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    rng = np.random.default_rng(21)
    data = rng.integers(0, 256, (IMAGES, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    synthetic.write_cifar_binary(tmp_path / "in" / "data_batch_1.bin", data, np.arange(IMAGES) % 10)
    argv = ["cifar10", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "ds")]
    assert main(["prepare", *argv, "--shard-size", "7"]) == 0  # 9 shards, uneven last one
    seen = tmp_path / "seen"
    seen.mkdir()

    def train_loop(config: dict) -> None:  # defined here so Ray pickles it by value
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        shard = ray.train.get_dataset_shard("train")
        for epoch in range(config["epochs"]):
            indices, sums = [], []
            for batch in shard.iter_torch_batches(
                batch_size=8, local_shuffle_buffer_size=config["buffer"]
            ):
                pixels = batch["pixels"].long()  # (B, C, H, W) int64, as the trainer uses it
                assert pixels.shape[1:] == (3, 32, 32)
                indices += batch["index"].tolist()
                sums += pixels.sum(dim=(1, 2, 3)).tolist()
            np.save(f"{config['seen']}/rank{rank}-epoch{epoch}.npy", np.array([indices, sums]))
        ray.train.report({"epochs": config["epochs"]})

    dataset = open_prepared(str(tmp_path / "ds"))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"epochs": EPOCHS, "buffer": LOCAL_SHUFFLE_BUFFER, "seen": str(seen)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        datasets={"train": read_split(dataset, "train", shuffle=True, seed=0)},
        run_config=RunConfig(
            name="data-once",
            storage_path=str(tmp_path / "runs"),
            failure_config=FailureConfig(controller_failure_limit=1),
        ),
    )
    trainer.fit()

    pixel_sums = data.reshape(IMAGES, -1).sum(axis=1, dtype=np.int64)
    orders = [np.load(seen / f"rank0-epoch{epoch}.npy")[0].tolist() for epoch in range(EPOCHS)]
    assert orders[0] != orders[1]  # reshuffled between epochs
    for epoch in range(EPOCHS):
        per_rank = [np.load(seen / f"rank{rank}-epoch{epoch}.npy") for rank in (0, 1)]
        indices = np.concatenate([ranked[0] for ranked in per_rank])
        assert sorted(indices.tolist()) == list(range(IMAGES)), epoch  # once, no more, no less
        assert all(len(ranked[0]) == IMAGES // 2 for ranked in per_rank)
        np.testing.assert_array_equal(np.concatenate([r[1] for r in per_rank]), pixel_sums[indices])
