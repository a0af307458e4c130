"""Ancestral sampling, one sub-pixel at a time in raster and R -> G -> B order (section 2).

Two samplers yield the same sequence of logits: the naive one runs the network once per
sub-pixel (on the rows generated so far: the logits of row i depend only on rows 0..i); the
cached one (`cached_sampling.py`) evaluates every layer at the current position only. Drawing,
temperature, prefixes and progress are shared, so a seeded generator gives the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from pixelrnn_model.cached_sampling import Step, cached_steps

Progress = Callable[[int, int], None]
LogitsHook = Callable[[int, int, int, Tensor], None]
METHODS = ("cached", "naive")


def draw(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """Sample one value per row of (N, levels) logits at `temperature` -> int64 (N,)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def naive_steps(model: nn.Module, pixels: Tensor, rows: int) -> Iterator[Step]:
    """Yield (i, j, c, logits (n, levels)) per sub-pixel, one network pass each.

    Args:
        model: a PixelRNN.
        pixels: int64 (n, C, H, W); the caller writes each drawn value before resuming.
        rows: leading rows that are already given.
    """
    _, C, H, W = pixels.shape
    for i in range(rows, H):
        for j in range(W):
            for c in range(C):
                yield i, j, c, model(pixels[:, :, : i + 1])[:, :, c, i, j]  # (n, levels)


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
    method: str = "cached",
    logits_hook: LogitsHook | None = None,
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
        method: "cached" (incremental, O(layers) per sub-pixel) or "naive" (one full network
            pass per sub-pixel, for verification); both consume `generator` identically.
        logits_hook: called as logits_hook(i, j, c, logits (n, levels)) before each draw.

    Returns:
        int64 (n, C, height, width) in [0, levels).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cfg = model.config
    device = next(model.parameters()).device
    pixels = torch.zeros(n, cfg.channels, height, width, dtype=torch.long, device=device)
    if rows:
        if prefix is None or tuple(prefix.shape) != tuple(pixels.shape):
            raise ValueError(f"prefix must have shape {tuple(pixels.shape)} when rows > 0")
        pixels[:, :, :rows] = prefix[:, :, :rows].to(device)
    was_training = model.training
    model.eval()
    steps = cached_steps if method == "cached" else naive_steps
    total, done = (height - rows) * width * cfg.channels, 0
    try:
        for i, j, c, logits in steps(model, pixels, rows):
            if logits_hook is not None:
                logits_hook(i, j, c, logits)
            pixels[:, c, i, j] = draw(logits, temperature, generator)
            done += 1
            if progress is not None:
                progress(done, total)
    finally:
        model.train(was_training)
    return pixels
