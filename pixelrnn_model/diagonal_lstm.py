"""Diagonal BiLSTM layer (van den Oord et al. 2016, section 3.2).

Each direction scans the image's diagonals in order: position (r, j) on diagonal s = r + j
reads the state of (r-1, j) and (r, j-1), i.e. the paper's skewed map's 2-tap state-to-state
conv over (r-1, s-1) and (r, s-1). Instead of materialising the skewed H x (W+H-1) map, whose
padding doubles the work, the input-to-state map is gathered into diagonal-major order and each
step processes exactly the positions of one diagonal; states outside the image are the initial
state (zero unless learned), which is what the zero-padded skewed map holds there. The
right-to-left direction runs on the width-flipped map; its output is flipped back and shifted
down one row so that no position sees its own row's future.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn

from pixelrnn_model.conv_lstm import ConvLSTMScan
from pixelrnn_model.masked_conv import MaskedConv2d
from pixelrnn_model.skew import shift_down


@lru_cache(maxsize=64)
def diagonal_order(
    height: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Raster indices sorted by diagonal s = r + j, then by row; its inverse; diagonal lengths.

    Cached per (H, W, device): every layer of every forward pass uses the same geometry.

    Returns:
        order: int64 (H*W,) raster index r*W + j of each position in diagonal-major order.
        raster: int64 (H*W,) the inverse permutation (diagonal-major index of each position).
        counts: H+W-1 diagonal lengths, summing to H*W.
    """
    rows = torch.arange(height, device=device)[:, None]  # (H, 1)
    cols = torch.arange(width, device=device)[None, :]  # (1, W)
    diagonal = (rows + cols).flatten()  # (H*W,)
    order = torch.argsort(diagonal * height + rows.expand(height, width).flatten())
    raster = torch.empty_like(order)
    raster[order] = torch.arange(order.numel(), device=device)
    counts = tuple(torch.bincount(diagonal, minlength=height + width - 1).tolist())
    return order, raster, counts


class DiagonalBiLSTM(nn.Module):
    """Both diagonal directions, scanned together, plus the 1x1 output convolution.

    Args:
        channels: residual stream width 2h (input and output).
        hidden: h per direction.
        colours: image channels C.
        learn_initial_state: learn the state outside the image (above row 0, left of column 0).
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
        left, right = self.input_to_state(x).chunk(2, dim=1)  # each (B, 4h, H, W)
        both = torch.stack([left, right.flip(3)])  # (2, B, 4h, H, W)
        hidden = self.scan_diagonals(both)  # (2, B, h, H, W)
        combined = hidden[0] + shift_down(hidden[1].flip(3))  # (B, h, H, W)
        return self.output(combined)

    def scan_diagonals(self, input_to_state: Tensor) -> Tensor:
        """(D, B, 4h, H, W) -> hidden states (D, B, h, H, W), one step per diagonal."""
        D, B, _, H, W = input_to_state.shape
        order, raster, counts = diagonal_order(H, W, input_to_state.device)
        sequence = input_to_state.flatten(3)[..., order]  # (D, B, 4h, H*W) diagonal-major
        sequence = sequence.permute(0, 3, 1, 2).contiguous()  # (D, H*W, B, 4h)
        weight = self.scan.state_to_state_matrix(input_to_state.dtype)  # (D, 2h, 4h)
        h0, c0 = self.scan.initial_state(B, 1, sequence)  # (D, B, 1, h)
        h0, c0 = h0.transpose(1, 2), c0.transpose(1, 2)  # (D, 1, B, h)
        h = c = sequence.new_zeros(D, 0, B, self.hidden)  # states of diagonal -1 (empty)
        first_row, outputs = 0, []
        # split, not slicing: its backward is one cat instead of a zero map per step.
        for s, input_gates in enumerate(sequence.split(counts, dim=1)):  # (D, n, B, 4h)
            n, previous_first_row = input_gates.shape[1], first_row
            first_row = max(0, s - W + 1)
            offset = first_row - previous_first_row  # 0 or 1
            # Previous diagonal's states covering rows first_row-1 .. first_row+n-1.
            h_ext = torch.cat([h0, h, h0], dim=1)[:, offset : offset + n + 1]  # (D, n+1, B, h)
            c_left = torch.cat([c0, c, c0], dim=1)[:, offset + 1 : offset + n + 1]  # (D, n, B, h)
            taps = torch.stack([h_ext[:, :n], h_ext[:, 1:]], dim=-1)  # (D, n, B, h, 2): (r-1), r
            h, c = self.scan.cell(
                input_gates.reshape(D, n * B, -1),
                taps.reshape(D, n * B, -1),
                c_left.reshape(D, n * B, -1),
                weight,
            )
            h, c = h.view(D, n, B, -1), c.view(D, n, B, -1)
            outputs.append(h)
        hidden = torch.cat(outputs, dim=1)[:, raster]  # (D, H*W, B, h) raster order
        return hidden.view(D, H, W, B, -1).permute(0, 3, 4, 1, 2)  # (D, B, h, H, W)
