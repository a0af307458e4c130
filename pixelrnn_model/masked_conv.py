"""Masked 2-D convolution (van den Oord et al. 2016, section 3.4)."""

from __future__ import annotations

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
        """Compute `live_weight` once and reuse it until unfrozen (sampling: weights are fixed)."""
        self.frozen = None
        self.frozen = self.live_weight().detach() if frozen else None

    def at(self, x: Tensor, i: int = 0, j: int = 0, outputs: slice = slice(None)) -> Tensor:
        """The output (n, out) (or its `outputs` channels) at position (i, j) of the input map
        x (n, in, H, W), from the live window around it; a 1x1 conv also takes x (n, in)."""
        weight = self.live_weight()[outputs].flatten(1)  # (out, in * live rows * live cols)
        if x.dim() > 2:
            rows, cols = self.live
            top, left = i - self.padding[0] + rows.start, j - self.padding[1] + cols.start
            bottom, right = i - self.padding[0] + rows.stop, j - self.padding[1] + cols.stop
            x = x[:, :, max(top, 0) : bottom, max(left, 0) : right]  # clipped to the map
            above, before = max(-top, 0), max(-left, 0)
            below, after = bottom - top - above - x.shape[2], right - left - before - x.shape[3]
            if above or below or before or after:  # zero outside the map
                x = F.pad(x, (before, after, above, below))  # (n, in, live rows, live cols)
        return F.linear(x.flatten(1), weight, self.bias[outputs])


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
