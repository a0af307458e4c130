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
        self.crop, self.crop_padding = _live_window(mask, self.padding)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, H, W) -> (B, out, H, W).

        Only the kernel's live window is convolved: rows below the centre (and, in a one-row
        kernel, taps right of it) are masked to zero for every channel pair, so they are cropped
        away and the input padded to match. The weight keeps its full (out, in, kH, kW) shape.
        """
        if self.crop is None:
            return F.conv2d(x, self.masked_weight(), self.bias, self.stride, self.padding)
        rows, cols = self.crop
        weight = self.weight[:, :, rows, cols] * self.mask[:, :, rows, cols]
        return F.conv2d(F.pad(x, self.crop_padding), weight, self.bias, self.stride)

    def masked_weight(self) -> torch.Tensor:
        """The effective (out, in, kH, kW) weight."""
        return self.weight * self.mask


def _live_window(
    mask: Tensor, padding: tuple[int, int]
) -> tuple[tuple[slice, slice] | None, tuple[int, int, int, int]]:
    """The smallest (rows, cols) window of the kernel holding every nonzero of `mask` and the
    (left, right, top, bottom) input padding that keeps "same" output with it; (None, ...) when
    that window is the whole kernel (or the mask is all zero)."""
    live = mask.ne(0).any(dim=1).any(dim=0)  # (kH, kW)
    kernel_h, kernel_w = live.shape
    if not live.any():
        return None, (0, 0, 0, 0)
    row_index = live.any(dim=1).nonzero().flatten()
    col_index = live.any(dim=0).nonzero().flatten()
    top, bottom = int(row_index[0]), int(row_index[-1]) + 1
    left, right = int(col_index[0]), int(col_index[-1]) + 1
    if (top, bottom, left, right) == (0, kernel_h, 0, kernel_w):
        return None, (0, 0, 0, 0)
    pad_h, pad_w = padding
    crop_padding = (
        pad_w - left,
        pad_w - (kernel_w - right),
        pad_h - top,
        pad_h - (kernel_h - bottom),
    )
    return (slice(top, bottom), slice(left, right)), crop_padding
