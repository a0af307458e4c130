"""In-process demo: train a small Row LSTM for a minute on 32x32 crops of a bundled photograph.

Superseded by the Ray job on the built-in dataset once the training pipeline lands.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import skimage
import torch
from PIL import Image
from torchvision.utils import save_image

from pixelrnn_model import ModelConfig, PixelRNN, bits_per_dim, sample

logger = logging.getLogger(__name__)


def photo_crops(count: int, size: int, seed: int) -> torch.Tensor:
    """int64 (count, 3, size, size) random crops of skimage's bundled astronaut.png."""
    path = Path(skimage.__file__).parent / "data" / "astronaut.png"
    image = np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, image.shape[0] - size, count)
    cols = rng.integers(0, image.shape[1] - size, count)
    crops = np.stack([image[r : r + size, c : c + size] for r, c in zip(rows, cols, strict=True)])
    return torch.from_numpy(crops).permute(0, 3, 1, 2).long()  # (count, 3, size, size)


def run(output_dir: Path, seconds: float = 60.0, seed: int = 0) -> Path:
    """Train until `seconds` have passed, then write a 4x4 sample grid; returns its path."""
    torch.manual_seed(seed)
    data = photo_crops(512, 32, seed)
    model = PixelRNN(ModelConfig(layer="row_lstm", num_layers=2, hidden_channels=24))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    start, step = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        batch = data[torch.randint(0, len(data), (16,))]
        loss = bits_per_dim(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 10 == 0:
            logger.info("step %d: %.3f bits/dim", step, loss.item())
    samples = sample(model, 16, 32, 32, generator=torch.Generator().manual_seed(seed))
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "demo_samples.png"
    save_image(samples.float() / 255.0, path, nrow=4)
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(f"sample grid written to {run(Path('outputs'))}")
