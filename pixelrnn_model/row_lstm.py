"""Row LSTM layer (van den Oord et al. 2016, section 3.1).

A masked 1xk input-to-state convolution over the current row (computed for the whole map at
once) and a k-wide state-to-state convolution over the previous row's state: each position sees
a triangle above it and the pixels to its left.
"""

from __future__ import annotations

from torch import Tensor, nn

from pixelrnn_model.conv_lstm import ConvLSTMScan, lstm_step
from pixelrnn_model.masked_conv import MaskedConv2d


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
        """(B, 2h, H, W) -> (B, 2h, H, W)."""
        gates = self.input_to_state(x)  # (B, 4h, H, W)
        sequence = gates.permute(2, 0, 3, 1).unsqueeze(0)  # (1, H, B, W, 4h), a view
        hidden = self.scan(sequence)[0]  # (H, B, W, h), laid out in memory like the gates
        return self.output(hidden.permute(1, 3, 0, 2))  # (B, h, H, W) -> (B, 2h, H, W)

    def start_sampling(self, n: int, height: int, width: int, like: Tensor) -> dict[str, Tensor]:
        """The cache of `sample_at`: row i's inputs, row i-1's taps and cell states, row i's."""
        h0, c0 = self.scan.initial_state(n, width, like)  # each (1, n, W, h)
        inputs = like.new_zeros(n, self.input_to_state.in_channels, 1, width)
        taps = self.scan.gather_taps(h0)  # (1, n, W, k*h)
        h, c = h0.new_empty(h0.shape), c0.new_empty(c0.shape)
        return dict(inputs=inputs, taps=taps, c_above=c0.clone(), h=h, c=c)

    def sample_at(self, cache: dict[str, Tensor], i: int, j: int, x: Tensor) -> Tensor:
        """Layer input (n, 2h) at (i, j) -> layer output (n, 2h): the scan's step at (i, j)."""
        cache["inputs"][:, :, 0, j] = x
        input_gates = self.input_to_state.at(cache["inputs"], 0, j)  # (n, 4h)
        weight = self.scan.state_to_state_matrix()
        h, c = lstm_step(
            input_gates[None], cache["taps"][:, :, j], weight, cache["c_above"][:, :, j]
        )
        cache["h"][:, :, j], cache["c"][:, :, j] = h, c
        return self.output.at(h[0])

    def finish_row(self, cache: dict[str, Tensor], i: int) -> None:
        """Row i's states become the states above row i+1."""
        cache["taps"] = self.scan.gather_taps(cache["h"])
        cache["c_above"], cache["c"] = cache["c"], cache["c_above"]
