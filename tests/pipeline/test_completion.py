"""`pixelrnn sample --complete-from`: completions of PNG folders and prepared datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from pipeline.checkpointing import Progress, save_checkpoint
from pipeline.cli.main import main
from pipeline.completion import load_images
from pipeline.config import merge
from pipeline.datasets import synthetic
from pixelrnn_model import PixelRNN

TINY = {"model.num_layers": 1, "model.hidden_channels": 6, "model.head_channels": 6}


def write_checkpoint(folder: Path, **overrides) -> Path:
    cfg = merge([{**TINY, **overrides}])
    torch.manual_seed(0)
    model = PixelRNN(cfg.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    folder.mkdir()
    save_checkpoint(folder, model, optimizer, Progress(1, 1), cfg, image_shape=(3, 3, 5))
    return folder


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_completions_from_a_png_folder(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 6, 4, 3), dtype=np.uint8)  # (N, H, W, C)
    synthetic.write_pngs(tmp_path / "pngs", images)
    out = tmp_path / "out" / "grid.png"
    argv = ["sample", "--checkpoint", str(checkpoint), "--complete-from", str(tmp_path / "pngs")]
    assert main([*argv, "--rows", "3", "--n", "2", "--completions", "2", "--out", str(out)]) == 0
    paths = [out.with_name(f"grid_{name}.png") for name in ("original", "occluded", "completions")]
    assert png_size(paths[0]) == png_size(paths[1]) == (2 * 5 + 1, 7 + 1)
    assert png_size(paths[2]) == (2 * 5 + 1, 2 * 7 + 1)  # 2 completions (rows) x 2 images
    original, occluded, completions = (np.asarray(Image.open(path)) for path in paths)
    assert (occluded[1:4] == original[1:4]).all() and (occluded[4:7, 1:5] == 0).all()
    assert (completions[1:4, 1:5] == original[1:4, 1:5]).all()  # kept rows of image 0


def test_completion_rejects_rows_outside_the_image(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "ckpt")
    synthetic.write_pngs(tmp_path / "pngs", np.zeros((1, 4, 4, 3), dtype=np.uint8))
    argv = ["sample", "--checkpoint", str(checkpoint), "--complete-from", str(tmp_path / "pngs")]
    assert main([*argv, "--rows", "4", "--out", str(tmp_path / "grid.png")]) == 2
    assert "--rows must be between 1 and 3" in capsys.readouterr().err


def test_prepared_dataset_images_match_the_source(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    data = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    synthetic.write_cifar_binary(tmp_path / "in" / "test_batch.bin", data, np.arange(5))
    synthetic.write_cifar_binary(tmp_path / "in" / "data_batch_1.bin", data[:2], np.arange(2))
    argv = ["cifar10", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "ds")]
    assert main(["prepare", *argv]) == 0
    cfg = merge([{**TINY, "data.crop_size": 8}])
    pixels = load_images(tmp_path / "ds", 3, cfg, split="test")
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    (shard,) = manifest["splits"]["test"]["shards"]
    # `index` counts data_batch_1's 2 images first; the shard holds its rows shuffled
    first = pq.read_table(tmp_path / "ds" / shard["path"])["index"].to_numpy()[:3] - 2
    expected = torch.from_numpy(data[first]).permute(0, 3, 1, 2)[:, :, 12:20, 12:20]
    assert torch.equal(pixels, expected.long())


def test_binary_model_thresholds_png_folders(tmp_path):
    cfg = merge([{**TINY, "model.channels": 1, "model.levels": 2}])
    images = np.array([[[0, 127], [128, 255]]], dtype=np.uint8)[..., None].repeat(3, -1)
    synthetic.write_pngs(tmp_path / "pngs", images)
    assert load_images(tmp_path / "pngs", 1, cfg).tolist() == [[[[0, 0], [1, 1]]]]
