"""Straightforward per-step PixelRNN layers: the obvious implementation, for speed comparison.

Written the way the paper describes them and most public ports do: dense masked convolutions
(weight * mask, masked-out taps computed), a Conv1d per row and the textbook LSTM gates (Row
LSTM); a Python-loop skew, one Conv1d per skewed column and each direction scanned separately
(Diagonal BiLSTM). They reuse the optimized layers' weights, so outputs agree to float tolerance
(checked by `check_reference_matches` and tests/test_benchmark_reference.py), and only the speed
differs. Only the recurrent layers are swapped: the first 7x7 layer and the output head are the
model's own in both.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor

from pixelrnn_model import PixelRNN
from pixelrnn_model.diagonal_lstm import DiagonalBiLSTM
from pixelrnn_model.row_lstm import RowLSTM


def _lstm_gates(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The textbook LSTM update on (B, 4h, L) pre-activations [o, f, i, g] and (B, h, L) cell:
    separate autograd operations, as the obvious implementation writes it (for the same numbers,
    the optimized Row LSTM stack runs as one wavefront node, and each Diagonal BiLSTM layer's
    scan as one node)."""
    o, f, i, g = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _masked_conv(conv, x: Tensor) -> Tensor:
    """A masked convolution computed densely, masked-out taps included: (B, in, H, W) -> (B, out,
    H, W). (The optimized `MaskedConv2d` skips the kernel rows and columns its mask zeroes.)"""
    return F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=conv.padding)


def _conv_lstm(gates_in: Tensor, weight: Tensor, pad: tuple[int, int]) -> Tensor:
    """(B, 4h, T, L) input-to-state, (4h, h, k) state-to-state -> (B, h, T, L), one step per T."""
    B, four_h, T, L = gates_in.shape
    h = c = gates_in.new_zeros(B, four_h // 4, L)
    outputs = []
    for t in range(T):
        gates = gates_in[:, :, t] + F.conv1d(F.pad(h, pad), weight)  # (B, 4h, L)
        h, c = _lstm_gates(gates, c)
        outputs.append(h)
    return torch.stack(outputs, dim=2)


def _row_forward(self: RowLSTM, x: Tensor) -> Tensor:
    gates = _masked_conv(self.input_to_state, x)  # (B, 4h, H, W)
    k = self.scan.kernel
    hidden = _conv_lstm(gates, self.scan.state_to_state[0], (k // 2, k // 2))
    return _masked_conv(self.output, hidden)


def _shift_down(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W): row r takes row r-1; row 0 becomes zeros."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _skew_loop(x: Tensor) -> Tensor:
    B, C, H, W = x.shape
    out = x.new_zeros(B, C, H, W + H - 1)
    for r in range(H):
        out[:, :, r, r : r + W] = x[:, :, r]
    return out


def _unskew_loop(x: Tensor, width: int) -> Tensor:
    return torch.stack([x[:, :, r, r : r + width] for r in range(x.shape[2])], dim=2)


def _diagonal_direction(gates: Tensor, weight: Tensor) -> Tensor:
    W = gates.shape[-1]
    skewed = _skew_loop(gates).transpose(2, 3)  # (B, 4h, W+H-1, H): scan over columns
    hidden = _conv_lstm(skewed, weight, (1, 0)).transpose(2, 3)  # (B, h, H, W+H-1)
    return _unskew_loop(hidden, W)


def _diagonal_forward(self: DiagonalBiLSTM, x: Tensor) -> Tensor:
    left, right = _masked_conv(self.input_to_state, x).chunk(2, dim=1)
    weight = self.scan.state_to_state
    forward = _diagonal_direction(left, weight[0])
    backward = _diagonal_direction(right.flip(3), weight[1]).flip(3)
    return _masked_conv(self.output, forward + _shift_down(backward))


def use_reference_layers(model: PixelRNN) -> PixelRNN:
    """Swap every recurrent layer's forward for the per-step reference (in place), run the layers
    one after another, and keep the feature maps in the plain (B, C, H, W) layout those loops
    index."""
    model.memory_format = torch.contiguous_format
    model.streams = model.layer_by_layer  # the layers one after another, not the wavefront
    model.skip_features = lambda x: model.skip_sum(model.layer_by_layer(x))
    for layer in model.layers:
        if isinstance(layer, RowLSTM):
            layer.forward = types.MethodType(_row_forward, layer)
        elif isinstance(layer, DiagonalBiLSTM):
            layer.forward = types.MethodType(_diagonal_forward, layer)
    return model


def check_reference_matches(model: PixelRNN, pixels: Tensor) -> float:
    """Largest |logit difference| between the optimized and the reference layers."""
    import copy

    with torch.no_grad():
        fast = model(pixels)
        slow = use_reference_layers(copy.deepcopy(model))(pixels)
    return (fast - slow).abs().max().item()
