"""Sample grids (section 5, figures 6-7): drawn images tiled into one PNG with torchvision."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from pipeline.config import TrackingConfig
from pixelrnn_model import sample

logger = logging.getLogger(__name__)


def save_grid(pixels: Tensor, levels: int, path: str | Path, columns: int = 0) -> Path:
    """Write images as one PNG grid.

    Args:
        pixels: int64 (N, C, H, W) in [0, levels); C is 1 (grey or binary) or 3 (RGB).
        levels: values per sub-pixel (2 for binarized data, 256 for 8-bit).
        path: the PNG to write (parent folders are created).
        columns: images per row (0: a near-square grid).

    Returns:
        The path written.
    """
    count = pixels.shape[0]
    columns = columns or math.ceil(math.sqrt(count))
    scaled = pixels.detach().cpu().to(torch.float32) / (levels - 1)  # (N, C, H, W) in [0, 1]
    grid = make_grid(scaled, nrow=columns, padding=1, pad_value=1.0)  # (3, rows*H', cols*W')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path


def draw_grid(
    model: nn.Module,
    count: int,
    height: int,
    width: int,
    path: str | Path,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
) -> Path:
    """Sample `count` images of height x width from a PixelRNN and save them as a grid PNG."""
    pixels = sample(model, count, height, width, generator=generator, temperature=temperature)
    return save_grid(pixels, model.config.levels, path)  # pixels: (count, C, height, width)


def wants_samples(cfg: TrackingConfig, epoch: int, last_epoch: int) -> bool:
    """Whether a training run draws a sample grid after `epoch` (always after the last)."""
    every = cfg.sample_every_epochs
    wanted = epoch == last_epoch or bool(every and epoch % every == 0)
    return wanted and cfg.num_samples > 0


def write_samples(
    model: nn.Module, cfg: TrackingConfig, height: int, width: int, seed: int, path: Path
) -> Path:
    """Draw `cfg.num_samples` images with a generator seeded by `seed` and save the grid."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    logger.info("drawing %d samples of %dx%d", cfg.num_samples, height, width)
    return draw_grid(model, cfg.num_samples, height, width, path, generator, cfg.sample_temperature)
