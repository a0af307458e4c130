"""Diagonal BiLSTM layer (van den Oord et al. 2016, section 3.2).

Each direction scans the image's diagonals in order: position (r, j) on diagonal s = r + j
reads the state of (r-1, j) and (r, j-1), i.e. the paper's skewed map's 2-tap state-to-state
conv over (r-1, s-1) and (r, s-1). Instead of materialising the skewed H x (W+H-1) map, whose
padding doubles the work, the input-to-state map is gathered into diagonal-major order and each
step processes exactly the positions of one diagonal; states outside the image are the initial
state (zero unless learned), which is what the zero-padded skewed map holds there. The
right-to-left direction runs on the width-flipped map; its output is flipped back and shifted
down one row so that no position sees its own row's future.

All of it is done on rows of channel-last matrices: the residual stream is gathered once into
diagonal-major (position, batch, channel) rows for both directions (one `index_select`), the
1x1 input-to-state convolution is one batched product over those rows, and one gather per
direction brings the hidden states back to raster order, the flip and the one-row shift folded
into its indices.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrnn_model.conv_lstm import ConvLSTMScan
from pixelrnn_model.masked_conv import MaskedConv2d


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


@lru_cache(maxsize=64)
def bidirectional_gathers(
    height: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
    """Indices that move rows between raster order and both directions' diagonal-major order.

    Cached per (H, W, device).

    Returns:
        into_scan: int64 (2*H*W,) raster index of each diagonal-major row, left-to-right
            direction then right-to-left (which scans the width-flipped image).
        from_left: int64 (H*W,) for each raster position, its row in the left-to-right scan.
        from_right: int64 (H*W,) for each raster position (r, j), the row of (r-1, j) in the
            right-to-left scan: the paper's one-row shift; row 0 points at H*W, a zero row.
        counts: H+W-1 diagonal lengths.
    """
    order, raster, counts = diagonal_order(height, width, device)
    flipped = order // width * width + (width - 1 - order % width)  # same diagonals, mirrored
    into_scan = torch.cat([order, flipped])
    from_right = torch.empty_like(raster)
    from_right[flipped] = torch.arange(order.numel(), device=device)
    shifted = torch.full_like(from_right, order.numel())  # row 0: nothing above it
    shifted[width:] = from_right[:-width]
    return into_scan, raster, shifted, counts


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
        B, channels, H, W = x.shape
        into_scan, from_left, from_right, counts = bidirectional_gathers(H, W, x.device)
        rows = x.flatten(2).permute(2, 0, 1)  # (H*W, B, 2h) raster order, a view
        rows = rows.index_select(0, into_scan).view(2, H * W * B, channels)  # diagonal-major
        weight = self.input_to_state.masked_weight().view(2, 4 * self.hidden, channels)
        bias = self.input_to_state.bias.view(2, 1, 4 * self.hidden)
        gates = torch.baddbmm(bias.to(rows.dtype), rows, weight.transpose(1, 2).to(rows.dtype))
        hidden = self.scan_diagonals(gates.view(2, H * W, B, -1), counts, W)  # (2, H*W, B, h)
        right = F.pad(hidden[1], (0, 0, 0, 0, 0, 1))  # (H*W + 1, B, h): a zero row at the end
        combined = hidden[0].index_select(0, from_left) + right.index_select(0, from_right)
        out_weight = self.output.masked_weight().view(channels, self.hidden)
        out = torch.addmm(
            self.output.bias.to(combined.dtype),
            combined.view(H * W * B, self.hidden),
            out_weight.t().to(combined.dtype),
        )  # (H*W*B, 2h)
        return out.view(H, W, B, channels).permute(2, 3, 0, 1)  # (B, 2h, H, W), a view

    def scan_diagonals(self, sequence: Tensor, counts: tuple[int, ...], width: int) -> Tensor:
        """(D, H*W, B, 4h) diagonal-major input-to-state -> hidden states (D, H*W, B, h)."""
        D, _, B, _ = sequence.shape
        weight = self.scan.state_to_state_matrix(sequence.dtype)  # (D, 2h, 4h)
        h0, c0 = self.scan.initial_state(B, 1, sequence)  # (D, B, 1, h)
        h0, c0 = h0.transpose(1, 2), c0.transpose(1, 2)  # (D, 1, B, h)
        h = c = sequence.new_zeros(D, 0, B, self.hidden)  # states of diagonal -1 (empty)
        first_row, outputs = 0, []
        # split, not slicing: its backward is one cat instead of a zero map per step.
        for s, input_gates in enumerate(sequence.split(counts, dim=1)):  # (D, n, B, 4h)
            n, previous_first_row = input_gates.shape[1], first_row
            first_row = max(0, s - width + 1)
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
        return torch.cat(outputs, dim=1)  # (D, H*W, B, h) diagonal-major
