"""Cached sampling: the network evaluated at the current position only (section 2).

Within a pixel, colour c's logits read colours < c of the same pixel through the mask-A centre
tap, so the column of features at (i, j) is recomputed after every colour: C passes per pixel,
each through every layer at one position, against one full-network pass per sub-pixel for the
naive sampler. Colour group g at (i, j) reads colours < g only, so after the last colour's pass
the column is final and later positions may read it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from pixelrnn_model.incremental import Pointwise, PositionConv, cached_layer
from pixelrnn_model.network import PixelRNN

Step = tuple[int, int, int, Tensor]
"""(i, j, c, logits (n, levels)) of one sub-pixel still to be drawn."""


class CachedPixelRNN:
    """A `PixelRNN` evaluated one position at a time, for n images at once.

    Call `start_row(i)`, then `set_colour` / `column` / `logits` for j = 0..W-1, then
    `finish_row(i)`, for i = 0..H-1 in order.

    Args:
        model: the trained network (its weights are read once, here).
        n, height, width: images sampled together and their size.
    """

    @torch.no_grad()  # the cached weights and states never need gradients
    def __init__(self, model: PixelRNN, n: int, height: int, width: int):
        cfg = model.config
        like = model.input_conv.weight.detach()
        self.model, self.residual, self.skip = model, cfg.residual, cfg.skip
        self.first = PositionConv(model.input_conv, like)
        self.features = self.first.empty_map(n, height, width, like)  # (n, H+3, W+6, C)
        self.layers = [cached_layer(layer, n, height, width, like) for layer in model.layers]
        self.skips = [Pointwise(skip, like) for skip in model.skips]
        self.head_hidden = Pointwise(model.head_hidden, like)
        levels = cfg.levels
        self.head_output = [  # colour c's logits are output channels c*levels .. (c+1)*levels-1
            Pointwise(model.head_output, like, slice(c * levels, (c + 1) * levels))
            for c in range(cfg.channels)
        ]

    def set_colour(self, i: int, j: int, c: int, values: Tensor) -> None:
        """Record colour c of pixel (i, j): int64 (n,) for one colour or (n, C) for all."""
        index = (slice(None), i + self.first.pad_h, j + self.first.pad_w, c)
        self.features[index] = self.model.features(values)

    def start_row(self, i: int) -> None:
        """Prepare every layer for row i (rows 0..i-1 are complete)."""
        for layer in self.layers:
            layer.start_row(i)

    def column(self, i: int, j: int) -> Tensor:
        """The head's input (n, 2h) at (i, j), caching every layer's state there."""
        x = self.first.at(self.features, i, j)  # (n, 2h)
        skip_sum = None
        for index, layer in enumerate(self.layers):
            out = layer.at(i, j, x)
            x = x + out if self.residual else out
            if self.skip:
                skipped = self.skips[index](x)
                skip_sum = skipped if skip_sum is None else skip_sum + skipped
        return skip_sum if self.skip else x

    def logits(self, features: Tensor, c: int) -> Tensor:
        """Head input (n, 2h) -> colour c's logits (n, levels)."""
        hidden = self.head_hidden(F.relu(features))  # (n, head)
        return self.head_output[c](F.relu(hidden))

    def finish_row(self, i: int) -> None:
        """Row i is complete: fold it into the state later rows read."""
        for layer in self.layers:
            layer.finish_row(i)


@torch.no_grad()
def cached_steps(model: PixelRNN, pixels: Tensor, rows: int) -> Iterator[Step]:
    """Yield each sub-pixel's logits in raster, R -> G -> B order, with cached state.

    Before resuming, the caller writes the drawn values into `pixels[:, c, i, j]`; rows < `rows`
    are taken from `pixels` as given.

    Args:
        model: a PixelRNN.
        pixels: int64 (n, C, H, W), filled in place.
        rows: leading rows that are already given.
    """
    n, C, H, W = pixels.shape
    network = CachedPixelRNN(model, n, H, W)
    for i in range(H):
        network.start_row(i)
        for j in range(W):
            if i < rows:
                network.set_colour(i, j, slice(None), pixels[:, :, i, j])
                network.column(i, j)
                continue
            for c in range(C):
                yield i, j, c, network.logits(network.column(i, j), c)
                network.set_colour(i, j, c, pixels[:, c, i, j])
        if i + 1 < H:
            network.finish_row(i)
