"""Diagonal BiLSTM layer (van den Oord et al. 2016, section 3.2).

Each direction skews its 1x1 masked input-to-state map to (H, W+H-1) and scans it column by
column with a 2-tap state-to-state conv reading (r-1, s-1) and (r, s-1). The right-to-left
direction runs on the width-flipped map; its output is flipped back and shifted down one row so
that no position sees its own row's future.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pixelrnn_model.conv_lstm import ConvLSTMScan
from pixelrnn_model.masked_conv import MaskedConv2d
from pixelrnn_model.skew import shift_down, skew, unskew


class DiagonalBiLSTM(nn.Module):
    """Both diagonal directions, scanned together, plus the 1x1 output convolution.

    Args:
        channels: residual stream width 2h (input and output).
        hidden: h per direction.
        colours: image channels C.
        learn_initial_state: learn the state left of the first diagonal.
    """

    def __init__(self, channels: int, hidden: int, colours: int, learn_initial_state: bool):
        super().__init__()
        self.hidden = hidden
        # Eight gate blocks: [o, f, i, g] left-to-right, then [o, f, i, g] right-to-left.
        self.input_to_state = MaskedConv2d(channels, 8 * hidden, 1, colours, "B", out_blocks=8)
        self.scan = ConvLSTMScan(hidden, 2, (1, 0), 2, learn_initial_state)
        self.output = MaskedConv2d(hidden, channels, 1, colours, "B")

    def forward(self, x: Tensor) -> Tensor:
        """(B, 2h, H, W) -> (B, 2h, H, W)."""
        B, _, H, W = x.shape
        h = self.hidden
        left, right = self.input_to_state(x).chunk(2, dim=1)  # each (B, 4h, H, W)
        both = torch.cat([left, right.flip(3)])  # (2B, 4h, H, W)
        skewed = skew(both)  # (2B, 4h, H, W+H-1)
        steps = skewed.shape[-1]
        sequence = skewed.view(2, B, 4 * h, H, steps).permute(0, 4, 1, 3, 2)  # (2, S, B, H, 4h)
        hidden = self.scan(sequence.contiguous())  # (2, S, B, H, h)
        maps = hidden.permute(0, 2, 4, 3, 1).reshape(2 * B, h, H, steps)  # (2B, h, H, S)
        maps = unskew(maps, W).view(2, B, h, H, W)
        combined = maps[0] + shift_down(maps[1].flip(3))  # (B, h, H, W)
        return self.output(combined)
