"""Ancestral sampling, one sub-pixel at a time in raster and R -> G -> B order (section 2).

The naive sampler runs the network once per sub-pixel; the cached one evaluates every layer at
the current position only, through the layers' own steps (`start_sampling`, `sample_at`,
`finish_row`), `ConvWindow` and `MaskedConv2d.point`. Both yield the same logits and share
the drawing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrnn_model.masked_conv import ConvWindow

Step = tuple[int, int, int, Tensor]  # (i, j, c, logits (n, levels)) of a sub-pixel to draw
METHODS = ("cached", "naive")


def draw(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """Sample one value per row of (N, levels) logits at `temperature` -> int64 (N,) on the
    logits' device, drawn on the generator's (so one seeded generator gives the same draws for
    a model anywhere)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    device = probs.device if generator is None else generator.device
    drawn = torch.multinomial(probs.to(device), 1, generator=generator)[:, 0]
    return drawn.to(logits.device)


@torch.no_grad()
def naive_steps(model: nn.Module, pixels: Tensor, rows: int) -> Iterator[Step]:
    """Yield (i, j, c, logits (n, levels)) per sub-pixel of pixels (n, C, H, W) after the first
    `rows` rows, one network pass each (on rows 0..i: row i's logits depend on no later row)."""
    _, C, H, W = pixels.shape
    for i in range(rows, H):
        for j in range(W):
            for c in range(C):
                yield i, j, c, model(pixels[:, :, : i + 1])[:, :, c, i, j]  # (n, levels)


@torch.no_grad()
def cached_steps(model: nn.Module, pixels: Tensor, rows: int) -> Iterator[Step]:
    """`naive_steps`, evaluating every layer at (i, j) only. Colour c reads colours < c of its
    own pixel (mask A), so the position's column is recomputed after every colour."""
    n, C, H, W = pixels.shape
    cfg, like = model.config, model.input_conv.weight
    features = ConvWindow(model.input_conv, n, H, W, like)  # the first conv's input, as drawn
    caches = [layer.start_sampling(n, H, W, like) for layer in model.layers]
    streams = like.new_empty(n, len(model.layers), 2 * cfg.hidden_channels)  # at (i, j)
    if cfg.skip:  # every layer's skip conv as one product over the streams
        skip_matrix = torch.cat([skip.matrix() for skip in model.skips])  # (L*2h, 2h)
        skip_bias = torch.stack([skip.bias for skip in model.skips]).sum(0)

    def column(i: int, j: int) -> Tensor:
        """The head's input (n, 2h) at (i, j), caching every layer's state there."""
        x = features.at(i, j)  # (n, 2h)
        for index, (layer, cache) in enumerate(zip(model.layers, caches, strict=True)):
            out = layer.sample_at(cache, i, j, x)
            x = torch.add(x, out, out=streams[:, index]) if cfg.residual else out
            if cfg.skip and not cfg.residual:
                streams[:, index] = x
        return torch.addmm(skip_bias, streams.view(n, -1), skip_matrix) if cfg.skip else x

    def logits(x: Tensor, c: int) -> Tensor:  # head input (n, 2h) -> colour c's (n, levels)
        hidden = model.head_hidden.point(F.relu(x)).relu_()
        return model.head_output.point(hidden, slice(c * cfg.levels, (c + 1) * cfg.levels))

    for i in range(H):
        for j in range(W):
            if i < rows:
                features.put(i, j, model.features(pixels[:, :, i, j]))
                column(i, j)
                continue
            for c in range(C):
                yield i, j, c, logits(column(i, j), c)
                features.put(i, j, model.features(pixels[:, c, i, j]), channel=c)
        for layer, cache in zip(model.layers, caches, strict=True):
            layer.finish_row(cache, i)


@contextmanager
def sampling_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, and every module with a `freeze` method computes its effective weight once."""
    was_training, modules = model.training, [m for m in model.modules() if hasattr(m, "freeze")]
    model.eval()
    try:
        for module in modules:
            module.freeze(True)
        yield
    finally:
        for module in modules:
            module.freeze(False)
        model.train(was_training)


@torch.no_grad()
def sample(
    model: nn.Module,
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    prefix: Tensor | None = None,
    rows: int = 0,
    method: str = "cached",
    logits_hook: Callable[[int, int, int, Tensor], None] | None = None,
    seed: int | None = None,
) -> Tensor:
    """Draw images from a `PixelRNN`.

    Args:
        model: a PixelRNN (its `config` gives channels and levels).
        n: number of images.
        height, width: image size.
        generator: a seeded torch.Generator on any device, for reproducible samples; the draws
            run on its device, so a CPU generator gives the same draws for a model on any device.
        temperature: softmax temperature (1.0 samples the model's distribution).
        progress: called as progress(done, total) after each sub-pixel.
        prefix: int64 (n, C, height, width) images whose first `rows` rows are kept.
        rows: rows of `prefix` to keep; the rest is completed by the model.
        method: "cached" (incremental, O(layers) per sub-pixel) or "naive" (one full network
            pass per sub-pixel, for verification); both consume `generator` identically.
        logits_hook: called as logits_hook(i, j, c, logits (n, levels)) before each draw.
        seed: instead of `generator`: draw with a new generator on the model's device, seeded.

    Returns:
        int64 (n, C, height, width) in [0, levels), on the model's device.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    device = next(model.parameters()).device
    if seed is not None and generator is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    cfg = model.config
    pixels = torch.zeros(n, cfg.channels, height, width, dtype=torch.long, device=device)
    if rows:
        if prefix is None or tuple(prefix.shape) != tuple(pixels.shape):
            raise ValueError(f"prefix must have shape {tuple(pixels.shape)} when rows > 0")
        pixels[:, :, :rows] = prefix[:, :, :rows].to(device)
    steps = cached_steps if method == "cached" else naive_steps
    total, done = (height - rows) * width * cfg.channels, 0
    with sampling_mode(model):
        for i, j, c, logits in steps(model, pixels, rows):
            if logits_hook is not None:
                logits_hook(i, j, c, logits)
            pixels[:, c, i, j] = draw(logits, temperature, generator)
            done += 1
            if progress is not None:
                progress(done, total)
    return pixels
