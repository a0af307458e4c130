"""Row LSTM layer (van den Oord et al. 2016, section 3.1).

A masked 1xk input-to-state convolution over the current row and a k-wide state-to-state
convolution over the previous row's state: each position sees a triangle above it and the pixels
to its left. A stack of them runs as one wavefront (`row_wavefront.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pixelrnn_model import workspace
from pixelrnn_model.conv_lstm import CellBuffers, ConvLSTMScan, state_dtype
from pixelrnn_model.masked_conv import ConvWindow, MaskedConv2d
from pixelrnn_model.row_wavefront import RowWavefront


class RowLSTM(nn.Module):
    """Row LSTM with its 1x1 output convolution back to the residual width.

    Args:
        channels: residual stream width 2h (input and output).
        hidden: h.
        colours: image channels C.
        kernel: k of both convolutions.
        learn_initial_state: learn the state above the first row.
    """

    def __init__(
        self, channels: int, hidden: int, colours: int, kernel: int, learn_initial_state: bool
    ):
        super().__init__()
        self.input_to_state = MaskedConv2d(
            channels, 4 * hidden, (1, kernel), colours, "B", out_blocks=4
        )
        self.scan = ConvLSTMScan(hidden, kernel, (kernel // 2, kernel // 2), 1, learn_initial_state)
        self.output = MaskedConv2d(hidden, channels, 1, colours, "B")

    def forward(self, x: Tensor) -> Tensor:
        """(B, 2h, H, W) -> (B, 2h, H, W), channels-last: this layer alone."""
        return row_lstm_stack(x, [self], residual=False)[..., 0, :].permute(0, 3, 1, 2)

    def start_sampling(self, n: int, height: int, width: int, like: Tensor) -> dict:
        """The cache of `sample_at`: the layer inputs' map, the states of the row above (zero
        padded for the state taps) and of the current row, and the cell's buffers."""
        hidden, kernel, left = self.scan.hidden, self.scan.kernel, self.scan.pad[0]
        state = state_dtype(like.dtype)
        h0, c0 = self.scan.initial_vectors(like)  # each (1, h)
        h_above = like.new_zeros(n, width + kernel - 1, hidden)
        h_above[:, left : left + width] = h0[0]
        c_above = like.new_empty(n, width, hidden, dtype=state)
        c_above[:] = c0[0]
        return dict(
            inputs=ConvWindow(self.input_to_state, n, height, width, like),
            h_above=h_above,
            h_row=torch.zeros_like(h_above),
            c_above=c_above,
            c_row=torch.empty_like(c_above),
            cell=CellBuffers(n, hidden, like),
            state_matrix=self.scan.state_to_state_matrix()[0],  # (k*h, 4h)
        )

    def sample_at(self, cache: dict, i: int, j: int, x: Tensor) -> Tensor:
        """Layer input (n, 2h) at (i, j) -> layer output (n, 2h): the scan's step at (i, j)."""
        inputs, kernel, n = cache["inputs"], self.scan.kernel, x.shape[0]
        inputs.put(i, j, x)
        gates = inputs.at(i, j, out=cache["cell"].pre)  # (n, 4h)
        taps = cache["h_above"][:, j : j + kernel].reshape(n, -1)  # (n, k*h), a view
        gates.addmm_(taps, cache["state_matrix"])
        h = cache["h_row"][:, self.scan.pad[0] + j]
        cache["cell"](cache["c_above"][:, j], cache["c_row"][:, j], h)
        return self.output.point(h)

    def finish_row(self, cache: dict, i: int) -> None:
        """Row i's states become the states above row i+1 (the buffers swap; pads stay zero)."""
        cache["h_above"], cache["h_row"] = cache["h_row"], cache["h_above"]
        cache["c_above"], cache["c_row"] = cache["c_row"], cache["c_above"]


@torch.compiler.disable  # the steps are a Python loop: traced, they unroll (12+ min to compile)
def row_lstm_stack(
    x: Tensor, layers: Sequence[RowLSTM], residual: bool, read: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Run Row LSTM layers one after another on x, as one wavefront.

    Args:
        x: (B, 2h, H, W) the first layer's input.
        layers: RowLSTM layers of one shape (same h, k and masks).
        residual: each layer's output is added to its input (else it replaces it).
        read: the skip connections, weight (L, 2h, Co) and bias (Co): then only their sum over
            layers is returned (the streams stay inside the wavefront's buffers).

    Returns:
        Without `read`: (B, H, W, L, 2h), the stream after each layer (every position's L
        streams side by side). With it: (B, H, W, Co), sum_l stream_l @ weight[l] + bias.
    """
    first = layers[0]
    rows, cols = first.input_to_state.live
    pad = first.input_to_state.padding[1]
    geometry = (
        cols.stop - cols.start,  # x's taps
        max(0, pad - cols.start),  # zero columns left of x
        max(0, cols.stop - 1 - pad),  # zero columns right of x
        first.scan.pad[0],  # zero columns left of the state
    )
    if rows.stop - rows.start != 1:
        raise ValueError("a Row LSTM's input-to-state kernel must have one live row")
    stacked = _stacked_weights(layers, x)
    inputs = (x, *stacked, *(read or ()))
    recorded = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    with workspace.saved_to_pool():
        return RowWavefront.apply(x, *stacked, geometry, residual, recorded, *(read or ()))


def _stacked_weights(layers: Sequence[RowLSTM], like: Tensor) -> list[Tensor]:
    """The wavefront's weights of every layer, stacked (a few ops for the whole stack, not a
    few per layer): w_in (L, kx*2h, 4h) rows (tap, channel); b_in (L, 4h); w_ss (L, k*h, 4h);
    w_out (L, h, 2h); b_out (L, 2h); h0, c0 (L, h). The layers share one shape and masks."""
    first = layers[0]
    (rows, cols), mask_in = first.input_to_state.live, first.input_to_state.mask
    w_in = torch.stack([layer.input_to_state.weight for layer in layers])[..., rows, cols]
    w_in = (w_in * mask_in[:, :, rows, cols])[:, :, :, 0]  # (L, 4h, 2h, kx)
    w_ss = torch.cat([layer.scan.state_to_state for layer in layers])  # (L, 4h, h, k)
    w_out = torch.stack([layer.output.weight for layer in layers])[..., 0, 0]  # (L, 2h, h)
    w_out = w_out * first.output.mask[:, :, 0, 0]
    L, gates = len(layers), w_in.shape[1]
    if first.scan.initial_hidden is not None:
        h0 = torch.cat([layer.scan.initial_hidden for layer in layers])
        c0 = torch.cat([layer.scan.initial_cell for layer in layers])
    else:
        h0 = c0 = like.new_zeros(L, first.scan.hidden, dtype=state_dtype(like.dtype))
    return [
        w_in.permute(0, 3, 2, 1).reshape(L, -1, gates),
        torch.stack([layer.input_to_state.bias for layer in layers]),
        w_ss.permute(0, 3, 2, 1).reshape(L, -1, gates),
        w_out.transpose(1, 2),
        torch.stack([layer.output.bias for layer in layers]),
        h0,
        c0,
    ]
