"""Ancestral sampling, one sub-pixel at a time in raster and R -> G -> B order (section 2).

The naive sampler runs the network once per sub-pixel. Because the network is causal, the logits
of row i depend only on rows 0..i, so each pass runs on the rows generated so far.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Progress = Callable[[int, int], None]


def draw(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """Sample one value per row of (N, levels) logits at `temperature` -> int64 (N,)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def sample(
    model: nn.Module,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    progress: Progress | None = None,
    prefix: Tensor | None = None,
    rows: int = 0,
) -> Tensor:
    """Draw images from a `PixelRNN`.

    Args:
        model: a PixelRNN (its `config` gives channels and levels).
        n: number of images.
        height, width: image size.
        generator: a seeded torch.Generator on the model's device, for reproducible samples.
        temperature: softmax temperature (1.0 samples the model's distribution).
        progress: called as progress(done, total) after each sub-pixel.
        prefix: int64 (n, C, height, width) images whose first `rows` rows are kept.
        rows: rows of `prefix` to keep; the rest is completed by the model.

    Returns:
        int64 (n, C, height, width) in [0, levels).
    """
    cfg = model.config
    device = next(model.parameters()).device
    pixels = torch.zeros(n, cfg.channels, height, width, dtype=torch.long, device=device)
    if rows:
        if prefix is None or tuple(prefix.shape) != tuple(pixels.shape):
            raise ValueError(f"prefix must have shape {tuple(pixels.shape)} when rows > 0")
        pixels[:, :, :rows] = prefix[:, :, :rows].to(device)
    was_training = model.training
    model.eval()
    total, done = (height - rows) * width * cfg.channels, 0
    try:
        for i in range(rows, height):
            for j in range(width):
                for c in range(cfg.channels):
                    logits = model(pixels[:, :, : i + 1])[:, :, c, i, j]  # (n, levels)
                    pixels[:, c, i, j] = draw(logits, temperature, generator)
                    done += 1
                    if progress is not None:
                        progress(done, total)
    finally:
        model.train(was_training)
    return pixels
