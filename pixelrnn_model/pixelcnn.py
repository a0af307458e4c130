"""PixelCNN residual block (van den Oord et al. 2016, sections 3.3 and 3.5, figure 5)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pixelrnn_model.masked_conv import ConvWindow, MaskedConv2d


class PixelCNNBlock(nn.Module):
    """ReLU -> 1x1 (2h -> h) -> ReLU -> kxk mask B (h -> h) -> ReLU -> 1x1 (h -> 2h).

    Args:
        channels: residual stream width 2h.
        hidden: h.
        colours: image channels C.
        kernel: size of the masked convolution.
    """

    def __init__(self, channels: int, hidden: int, colours: int, kernel: int):
        super().__init__()
        self.reduce = MaskedConv2d(channels, hidden, 1, colours, "B")
        self.conv = MaskedConv2d(hidden, hidden, kernel, colours, "B")
        self.output = MaskedConv2d(hidden, channels, 1, colours, "B")

    def forward(self, x: Tensor) -> Tensor:
        """(B, 2h, H, W) -> (B, 2h, H, W)."""
        x = self.reduce(F.relu(x))
        x = self.conv(F.relu(x))
        return self.output(F.relu(x))

    def start_sampling(self, n: int, height: int, width: int, like: Tensor) -> dict:
        """The cache of `sample_at`: the masked conv's input map, filled position by position."""
        return {"reduced": ConvWindow(self.conv, n, height, width, like)}

    def sample_at(self, cache: dict, i: int, j: int, x: Tensor) -> Tensor:
        """Layer input (n, 2h) at (i, j) -> layer output (n, 2h)."""
        reduced = cache["reduced"]
        reduced.put(i, j, self.reduce.point(F.relu(x)).relu_())
        return self.output.point(reduced.at(i, j).relu_())

    def finish_row(self, cache: dict, i: int) -> None:
        """Nothing to carry: the cached map already holds row i."""
