"""Masked 2-D convolution (van den Oord et al. 2016, section 3.4).

Only the kernel's unmasked part is computed. The taps after the centre (in raster order) are
zero, so the convolution runs over the crop that holds the taps before the centre (for a kxk
kernel: the top k//2 + 1 rows; for the Row LSTM's 1xk: the k//2 taps to the left). The centre
tap is block-triangular over colour groups (mask B: output group g reads input groups <= g, mask
A: < g), so it is one 1x1 product per output group over the input channels it may read, which
skips a third of its products for RGB. The effective weight is still `weight * mask` (and
`masked_weight()` returns it), so the result equals the dense masked convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrnn_model.masks import causal_mask, colour_groups


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
        centre_h, centre_w = size[0] // 2, size[1] // 2
        # The centre tap is computed per colour group when the input is one R/G/B-grouped
        # block (its visible channels are then a prefix); otherwise it joins the crop.
        self._split_centre = colours > 1 and in_blocks == 1
        # The crop: rows [0, crop_h) x columns [0, crop_w) of the kernel hold every tap
        # before the centre, and the centre itself unless it is split off.
        with_centre = not self._split_centre
        self._crop = (
            centre_h + 1 if centre_w > 0 or with_centre else centre_h,
            size[1] if centre_h > 0 else centre_w + int(with_centre),
        )
        crop_mask = mask[:, :, : self._crop[0], : self._crop[1]].clone()
        if self._split_centre and self._crop[0] > centre_h and self._crop[1] > centre_w:
            crop_mask[:, :, centre_h, centre_w] = 0.0  # computed by the per-group products
        self.register_buffer("crop_mask", crop_mask, persistent=False)
        self._groups: list[tuple[int, int, int]] = []  # (first row, end row, visible inputs)
        order = torch.arange(out_channels)
        if self._split_centre:
            out_group = colour_groups(out_channels, colours, out_blocks)
            order = torch.argsort(out_group, stable=True)  # group-major output channels
            per_group, start = in_channels // colours, 0
            for group in range(colours):
                end = start + int((out_group == group).sum())
                visible = per_group * (group + 1 if mask_type == "B" else group)
                self._groups.append((start, end, visible))
                start = end
        # Centre products come out group-major; `centre_restore` puts them back in order.
        self._reorder = not torch.equal(order, torch.arange(out_channels))
        self.register_buffer("centre_order", order, persistent=False)
        self.register_buffer("centre_restore", torch.argsort(order), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in, H, W) -> (B, out, H, W)."""
        _, _, H, W = x.shape
        centre_h, centre_w = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        out = None
        crop_h, crop_w = self._crop
        if crop_h and crop_w:
            weight = self.weight[:, :, :crop_h, :crop_w] * self.crop_mask
            padded = F.pad(x, (centre_w, max(0, crop_w - 1 - centre_w), centre_h, 0))
            out = F.conv2d(padded, weight)[:, :, :H, :W]  # (B, out, H, W)
        if self._split_centre:
            centre = self.weight[:, :, centre_h, centre_w]  # (out, in)
            if self._reorder:
                centre = centre.index_select(0, self.centre_order)  # group-major rows
            parts = []
            for start, end, visible in self._groups:
                if visible:
                    weight = centre[start:end, :visible, None, None]
                    parts.append(F.conv2d(x[:, :visible], weight))
                else:
                    parts.append(x.new_zeros(x.shape[0], end - start, H, W))
            centre_out = torch.cat(parts, dim=1)  # (B, out, H, W), group-major
            if self._reorder:
                centre_out = centre_out.index_select(1, self.centre_restore)
            out = centre_out if out is None else out + centre_out
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def dense_forward(self, x: Tensor) -> Tensor:
        """The same result as one dense convolution with `masked_weight()` (for reference)."""
        return F.conv2d(x, self.masked_weight(), self.bias, self.stride, self.padding)

    def masked_weight(self) -> torch.Tensor:
        """The effective (out, in, kH, kW) weight."""
        return self.weight * self.mask
