"""Masked 2-D convolution (van den Oord et al. 2016, section 3.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrnn_model.masks import causal_mask


class MaskedConv2d(nn.Conv2d):
    """A "same"-padded conv whose weight is multiplied by a mask A or B on every call.

    Args:
        in_channels, out_channels: conv channels.
        kernel_size: (kH, kW) or an int; odd sizes only.
        colours: image channels C for the R -> G -> B grouping.
        mask_type: "A" or "B".
        out_blocks, in_blocks: channel blocks grouped by colour separately (4 for LSTM gates).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        colours: int,
        mask_type: str,
        out_blocks: int = 1,
        in_blocks: int = 1,
    ):
        size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels, out_channels, size, padding=(size[0] // 2, size[1] // 2))
        mask = causal_mask(
            out_channels, in_channels, size, colours, mask_type, out_blocks, in_blocks
        )
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, H, W) -> (B, out, H, W)."""
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)

    def masked_weight(self) -> torch.Tensor:
        """The effective (out, in, kH, kW) weight."""
        return self.weight * self.mask
