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
        self.live, self.crop_padding = _live_window(mask, self.padding)
        self.frozen: Tensor | None = None
        self.frozen_matrix: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, H, W) -> (B, out, H, W), convolving only the kernel's live window: rows below
        the centre (and, in a one-row kernel, taps right of it) are masked to zero for every
        channel pair, so they are cropped away and the input padded to match. A 1x1 conv is a
        matrix product over channels (torch's direct conv is slow for narrow maps on CPU)."""
        if self.kernel_size == (1, 1):  # a product over channels: one GEMM, as for a Linear
            out = F.linear(x.permute(0, 2, 3, 1), self.live_weight()[:, :, 0, 0], self.bias)
            return out.permute(0, 3, 1, 2)  # (B, out, H, W), channels-last
        if self.crop_padding is None:
            return F.conv2d(x, self.live_weight(), self.bias, padding=self.padding)
        return F.conv2d(F.pad(x, self.crop_padding), self.live_weight(), self.bias)

    def live_weight(self) -> Tensor:
        """The effective weight over the live window, (out, in, live rows, live cols)."""
        if self.frozen is not None:
            return self.frozen
        rows, cols = self.live
        return self.weight[:, :, rows, cols] * self.mask[:, :, rows, cols]

    def freeze(self, frozen: bool) -> None:
        """Compute `live_weight` and `matrix` once and reuse them until unfrozen (sampling)."""
        self.frozen = self.frozen_matrix = None
        if frozen:
            self.frozen = self.live_weight().detach()
            self.frozen_matrix = self.matrix()

    def matrix(self) -> Tensor:
        """The live weight as a matrix over channels-last windows: (live rows * live cols * in,
        out), rows ordered (row, column, input channel)."""
        if self.frozen_matrix is not None:
            return self.frozen_matrix
        weight = self.live_weight()
        return weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0])

    def point(self, x: Tensor, outputs: slice | None = None, out: Tensor | None = None) -> Tensor:
        """A 1x1 conv at one position: x (n, in) -> (n, out), or its `outputs` channels."""
        matrix, bias = self.matrix(), self.bias
        if outputs is not None:
            matrix, bias = matrix[:, outputs], bias[outputs]
        return torch.addmm(bias, x, matrix, out=out)


class ConvWindow:
    """A masked conv evaluated at one position at a time, over a zero-padded channels-last map
    filled position by position (the cached samplers).

    Args:
        conv: the convolution.
        n, height, width: the map's batch and size.
        like: a tensor of the map's dtype and device.
    """

    def __init__(self, conv: MaskedConv2d, n: int, height: int, width: int, like: Tensor):
        (rows, cols), (pad_h, pad_w) = conv.live, conv.padding
        self.conv, self.rows, self.cols = conv, rows.stop - rows.start, cols.stop - cols.start
        self.up, self.left = pad_h - rows.start, pad_w - cols.start  # window above / left of (i, j)
        down, right = max(0, rows.stop - 1 - pad_h), max(0, cols.stop - 1 - pad_w)
        shape = (n, height + self.up + down, width + self.left + right, conv.in_channels)
        self.map = like.new_zeros(shape)

    def put(self, i: int, j: int, value: Tensor, channel: int | None = None) -> None:
        """Set the map at (i, j): value (n, in), or (n,) for one channel."""
        n, _, width, channels = self.map.shape
        offset = ((i + self.up) * width + j + self.left) * channels + (channel or 0)
        size, stride = ((n, channels), (self.map.stride(0), 1))
        if channel is not None:
            size, stride = (n,), stride[:1]
        self.map.as_strided(size, stride, self.map.storage_offset() + offset).copy_(value)

    def at(self, i: int, j: int, out: Tensor | None = None) -> Tensor:
        """The conv's output at (i, j): (n, out)."""
        n, _, width, channels = self.map.shape
        stride = self.map.stride()
        size = (n, self.rows, self.cols, channels)
        offset = self.map.storage_offset() + (i * width + j) * channels
        window = self.map.as_strided(size, stride, offset)  # (n, rows, cols, in)
        return self.conv.point(window.reshape(n, -1), out=out)


def _live_window(
    mask: Tensor, padding: tuple[int, int]
) -> tuple[tuple[slice, slice], tuple[int, int, int, int] | None]:
    """The smallest (rows, cols) window of the kernel holding every nonzero of `mask` (all of it
    for an all-zero mask), and the (left, right, top, bottom) input padding that keeps "same"
    output with it: None when the window is the whole kernel."""
    live = mask.ne(0).any(dim=1).any(dim=0)  # (kH, kW)
    (kernel_h, kernel_w), (pad_h, pad_w) = live.shape, padding
    if not live.any():
        return (slice(0, kernel_h), slice(0, kernel_w)), None
    rows, cols = live.any(dim=1).nonzero(), live.any(dim=0).nonzero()
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    window = slice(top, bottom), slice(left, right)
    if (top, bottom, left, right) == (0, kernel_h, 0, kernel_w):
        return window, None
    return window, (pad_w - left, pad_w - kernel_w + right, pad_h - top, pad_h - kernel_h + bottom)
