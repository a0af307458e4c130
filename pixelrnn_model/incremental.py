"""Each layer evaluated at one position at a time, with cached state (section 2, sampling).

Sampling visits positions in raster order, so every layer keeps what it computed for earlier
positions and evaluates only the current one: a masked convolution reads its window from a
cached map, the Row LSTM computes its state-to-state term once per row (it reads the row above
only), and the Diagonal BiLSTM advances its left-to-right state one position per call and runs
its right-to-left scan once per completed row (section 3.2: that direction reaches row i only
through `shift_down`). The numbers are the layers' own weights, read through `masked_weight()`
and `ConvLSTMScan.state_to_state_matrix()`; the recurrence is `lstm_cell`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrnn_model.conv_lstm import ConvLSTMScan, lstm_cell
from pixelrnn_model.diagonal_lstm import DiagonalBiLSTM
from pixelrnn_model.masked_conv import MaskedConv2d
from pixelrnn_model.pixelcnn import PixelCNNBlock
from pixelrnn_model.row_lstm import RowLSTM


class Pointwise:
    """A 1x1 masked convolution as a matrix product over the channel axis.

    Args:
        conv: a 1x1 `MaskedConv2d`.
        like: a tensor whose dtype and device the matrices take.
        rows: the output channels to keep (a slice of the conv's outputs).
    """

    def __init__(self, conv: MaskedConv2d, like: Tensor, rows: slice = slice(None)):
        weight = conv.masked_weight()[rows, :, 0, 0].to(like)  # (out, in)
        self.matrix = weight.t().contiguous()  # (in, out)
        self.bias = conv.bias[rows].to(like)  # (out,)

    def __call__(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out)."""
        if x.dim() == 2:
            return torch.addmm(self.bias, x, self.matrix)
        return torch.matmul(x, self.matrix) + self.bias


class PositionConv:
    """A kH x kW masked convolution evaluated at one position of a cached input map.

    The map is channels-last and zero-padded like the conv's own "same" padding: rows on top,
    columns on both sides (rows below the centre are masked out, so none are kept). Only the
    taps a mask can leave on are multiplied: the full rows above the centre and the centre row
    up to and including the centre.

    Args:
        conv: the `MaskedConv2d`.
        like: a tensor whose dtype and device the matrices take.
    """

    def __init__(self, conv: MaskedConv2d, like: Tensor):
        weight = conv.masked_weight().to(like)  # (out, in, kH, kW)
        out, _, kernel_h, kernel_w = weight.shape
        self.pad_h, self.pad_w = kernel_h // 2, kernel_w // 2
        above = weight[:, :, : self.pad_h]  # (out, in, pH, kW)
        centre = weight[:, :, self.pad_h, : self.pad_w + 1]  # (out, in, pW+1)
        self.above = above.permute(2, 3, 1, 0).reshape(-1, out)  # (pH*kW*in, out)
        self.centre = centre.permute(2, 1, 0).reshape(-1, out)  # ((pW+1)*in, out)
        self.bias = conv.bias.to(like)  # (out,)
        self.in_channels = conv.in_channels

    def empty_map(self, n: int, height: int, width: int, like: Tensor) -> Tensor:
        """A zero input map (n, pH + height, pW + width + pW, in) for `write` and `at`."""
        shape = (n, self.pad_h + height, width + 2 * self.pad_w, self.in_channels)
        return like.new_zeros(shape)

    def write(self, inputs: Tensor, i: int, j: int, value: Tensor) -> None:
        """Store the conv's (n, in) input at image position (i, j) of a map from `empty_map`."""
        inputs[:, i + self.pad_h, j + self.pad_w] = value

    def at(self, inputs: Tensor, i: int, j: int) -> Tensor:
        """The conv's (n, out) output at image position (i, j) of `inputs`."""
        n = inputs.shape[0]
        row = inputs[:, i + self.pad_h, j : j + self.pad_w + 1]  # (n, pW+1, in)
        out = torch.addmm(self.bias, row.reshape(n, -1), self.centre)
        if self.pad_h:
            window = inputs[:, i : i + self.pad_h, j : j + 2 * self.pad_w + 1]  # (n, pH, kW, in)
            out = torch.addmm(out, window.reshape(n, -1), self.above)
        return out


def state_to_state_term(scan: ConvLSTMScan, h: Tensor, weight: Tensor) -> Tensor:
    """The state-to-state convolution of a whole scan step, without the LSTM update.

    Args:
        scan: the layer's scan (its kernel and padding).
        h: (D, N, L, h) state of the previous step.
        weight: (D, k*h, 4h) from `scan.state_to_state_matrix`.

    Returns:
        (D, N, L, 4h), the term a scan step adds to the input-to-state gates.
    """
    D, N, L, _ = h.shape
    padded = F.pad(h, (0, 0, *scan.pad))  # (D, N, L+k-1, h)
    taps = padded.unfold(2, scan.kernel, 1).reshape(D, N * L, -1)  # (D, N*L, h*k)
    return torch.bmm(taps, weight).view(D, N, L, -1)


class CachedRowLSTM:
    """Row LSTM (section 3.1): the state at (i, j) reads the previous row's state at
    j-k//2..j+k//2 (one state-to-state product per row) and the inputs at (i, j-k//2..j).

    Args:
        layer: the trained `RowLSTM`.
        n, height, width: images sampled together and their size.
        like: a tensor with the sampling dtype and device.
    """

    def __init__(self, layer: RowLSTM, n: int, height: int, width: int, like: Tensor):
        self.scan = layer.scan
        self.weight = layer.scan.state_to_state_matrix(like.dtype)  # (1, k*h, 4h)
        self.input_to_state = PositionConv(layer.input_to_state, like)
        self.output = Pointwise(layer.output, like)
        self.inputs = self.input_to_state.empty_map(n, 1, width, like)  # (n, 1, W+k-1, 2h)
        h, c = layer.scan.initial_state(n, width, like)  # each (1, n, W, h)
        self.h_above, self.c_above = h, c
        self.h_row, self.c_row = torch.empty_like(h), torch.empty_like(c)
        self.recurrent = None

    def start_row(self, i: int) -> None:
        """Compute row i's state-to-state term from row i-1's state (h_0 for row 0)."""
        self.recurrent = state_to_state_term(self.scan, self.h_above, self.weight)[0]  # (n, W, 4h)

    def at(self, i: int, j: int, x: Tensor) -> Tensor:
        """Layer input (n, 2h) at (i, j) -> layer output (n, 2h) at (i, j)."""
        self.input_to_state.write(self.inputs, 0, j, x)
        gates = self.recurrent[:, j] + self.input_to_state.at(self.inputs, 0, j)  # (n, 4h)
        h, c = lstm_cell(gates, self.c_above[0, :, j])
        self.h_row[0, :, j], self.c_row[0, :, j] = h, c
        return self.output(h)

    def finish_row(self, i: int) -> None:
        """Row i's state becomes the state above row i+1."""
        self.h_above, self.h_row = self.h_row, torch.empty_like(self.h_row)
        self.c_above, self.c_row = self.c_row, torch.empty_like(self.c_row)


class CachedDiagonalBiLSTM:
    """Diagonal BiLSTM (section 3.2) in image coordinates: the left-to-right state at (i, j)
    reads (i-1, j) and (i, j-1); the right-to-left one reads (i-1, j) and (i, j+1), and reaches
    the output only one row down, so it is scanned once per completed row. States outside the
    image are the initial state (h_0, c_0), as in `DiagonalBiLSTM.scan_diagonals`.

    Args:
        layer: the trained `DiagonalBiLSTM`.
        n, height, width: images sampled together and their size.
        like: a tensor with the sampling dtype and device.
    """

    def __init__(self, layer: DiagonalBiLSTM, n: int, height: int, width: int, like: Tensor):
        hidden = layer.hidden
        self.input_left = Pointwise(layer.input_to_state, like, slice(0, 4 * hidden))
        self.input_right = Pointwise(layer.input_to_state, like, slice(4 * hidden, None))
        self.output = Pointwise(layer.output, like)
        taps = layer.scan.state_to_state_matrix(like.dtype).view(2, hidden, 2, 4 * hidden)
        self.up = taps[:, :, 0].contiguous()  # (D, h, 4h): the tap on the row above
        self.along = taps[:, :, 1].contiguous()  # (D, h, 4h): the previous step in this row
        h0, c0 = layer.scan.initial_state(n, 1, like)  # each (D, n, 1, h)
        self.h0, self.c0 = h0[:, :, 0], c0[:, :, 0]  # each (D, n, h)
        self.inputs = like.new_zeros(n, width, layer.input_to_state.in_channels)  # (n, W, 2h)
        self.h_above = self.h0[0, :, None].expand(n, width, hidden)  # row i-1, left-to-right
        self.h_row, self.c_row = like.new_empty(n, width, hidden), like.new_empty(n, width, hidden)
        self.right_above = like.new_zeros(n, width, hidden)  # row i-1, right-to-left (shifted)
        self.up_term = None

    def start_row(self, i: int) -> None:
        """Compute the left-to-right tap on row i-1 for the whole row i."""
        self.up_term = torch.matmul(self.h_above, self.up[0])  # (n, W, 4h)

    def at(self, i: int, j: int, x: Tensor) -> Tensor:
        """Layer input (n, 2h) at (i, j) -> layer output (n, 2h) at (i, j)."""
        self.inputs[:, j] = x
        if j == 0:
            h_left, c_left = self.h0[0], self.c0[0]  # (n, h)
        else:
            h_left, c_left = self.h_row[:, j - 1], self.c_row[:, j - 1]
        gates = self.up_term[:, j] + self.input_left(x)  # (n, 4h)
        h, c = lstm_cell(torch.addmm(gates, h_left, self.along[0]), c_left)
        self.h_row[:, j], self.c_row[:, j] = h, c
        return self.output(h + self.right_above[:, j])  # right-to-left state, shifted down

    def finish_row(self, i: int) -> None:
        """Scan row i right to left; it and row i's left-to-right state feed row i+1."""
        width = self.inputs.shape[1]
        above = self.right_above if i else self.h0[1, :, None]  # (n, W or 1, h)
        gates = self.input_right(self.inputs) + torch.matmul(above, self.up[1])  # (n, W, 4h)
        h, c = self.h0[1], self.c0[1]  # (n, h), right of the last column
        right_row = torch.empty_like(self.right_above)  # (n, W, h)
        for j in reversed(range(width)):
            h, c = lstm_cell(torch.addmm(gates[:, j], h, self.along[1]), c)
            right_row[:, j] = h
        self.right_above = right_row
        self.h_above, self.h_row = self.h_row, torch.empty_like(self.h_row)


class CachedPixelCNNBlock:
    """PixelCNN block (section 3.3): the kxk conv reads a cached map of ReLU(1x1 reduce(x)).

    Args:
        layer: the trained `PixelCNNBlock`.
        n, height, width: images sampled together and their size.
        like: a tensor with the sampling dtype and device.
    """

    def __init__(self, layer: PixelCNNBlock, n: int, height: int, width: int, like: Tensor):
        self.reduce = Pointwise(layer.reduce, like)
        self.conv = PositionConv(layer.conv, like)
        self.output = Pointwise(layer.output, like)
        self.reduced = self.conv.empty_map(n, height, width, like)  # (n, H+p, W+2p, h)

    def start_row(self, i: int) -> None:
        """Nothing to prepare: the cached map is all the conv needs."""

    def at(self, i: int, j: int, x: Tensor) -> Tensor:
        """Layer input (n, 2h) at (i, j) -> layer output (n, 2h) at (i, j)."""
        self.conv.write(self.reduced, i, j, F.relu(self.reduce(F.relu(x))))
        return self.output(F.relu(self.conv.at(self.reduced, i, j)))

    def finish_row(self, i: int) -> None:
        """Nothing to carry: the cached map already holds row i."""


CachedLayer = CachedRowLSTM | CachedDiagonalBiLSTM | CachedPixelCNNBlock


def cached_layer(layer: nn.Module, n: int, height: int, width: int, like: Tensor) -> CachedLayer:
    """The incremental evaluator of one network layer."""
    for kind, cached in (
        (RowLSTM, CachedRowLSTM),
        (DiagonalBiLSTM, CachedDiagonalBiLSTM),
        (PixelCNNBlock, CachedPixelCNNBlock),
    ):
        if isinstance(layer, kind):
            return cached(layer, n, height, width, like)
    raise TypeError(f"no cached sampler for {type(layer).__name__}")
