"""Diagonal BiLSTM layer (van den Oord et al. 2016, section 3.2).

Position (r, j) on diagonal s = r + j reads the states of (r-1, j) and (r, j-1): the skewed
map's 2-tap state-to-state conv over (r-1, s-1) and (r, s-1). The skewed map itself is never
built: positions are gathered into diagonal-major order and each step is one diagonal; states
outside the image are the initial state, which the zero-padded skewed map holds there.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrnn_model.conv_lstm import ConvLSTMScan, lstm_step
from pixelrnn_model.masked_conv import MaskedConv2d


@lru_cache(maxsize=64)
def diagonal_gathers(
    height: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
    """Indices between raster order and both directions' diagonal-major order (cached: every
    layer of every forward pass uses the same geometry).

    Returns:
        into_scan: int64 (2, H*W) raster index r*W + j of each diagonal-major row (sorted by
            diagonal s = r + j, then by row), left-to-right, then right-to-left (which scans the
            width-flipped image).
        from_left: int64 (H*W,) for each raster position, its row in the left-to-right scan.
        from_right: int64 (H*W,) for each raster position (r, j), the row of (r-1, j) in the
            right-to-left scan: the paper's one-row shift; row 0 points at H*W, a zero row.
        counts: the H+W-1 diagonal lengths.
    """
    rows = torch.arange(height, device=device).repeat_interleave(width)  # (H*W,) r
    diagonal = rows + torch.arange(width, device=device).repeat(height)  # (H*W,) r + j
    order = torch.argsort(diagonal * height + rows)
    flipped = order // width * width + (width - 1 - order % width)  # same diagonals, mirrored
    from_left, from_right = torch.empty_like(order), torch.empty_like(order)
    from_left[order] = from_right[flipped] = torch.arange(order.numel(), device=device)
    shifted = torch.full_like(from_right, order.numel())  # row 0: nothing above it
    shifted[width:] = from_right[:-width]
    counts = tuple(torch.bincount(diagonal, minlength=height + width - 1).tolist())
    return torch.stack([order, flipped]), from_left, shifted, counts


class DiagonalBiLSTM(nn.Module):
    """Both directions (the right-to-left one on the width-flipped map, its output flipped back
    and shifted down one row), scanned together, plus the 1x1 output convolution.

    The scan calls `lstm_step` once per diagonal, not `ConvLSTMScan.forward` (the Row LSTM's
    scan): diagonals differ in length, and a fixed-length scan would need the skewed map.

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
        """(B, 2h, H, W) -> (B, 2h, H, W), channels-last."""
        B, _, H, W = x.shape
        into_scan, from_left, from_right, counts = diagonal_gathers(H, W, x.device)
        gates = self.input_to_state(x)  # (B, 8h, H, W)
        rows = gates.permute(2, 3, 0, 1).reshape(H * W, B, -1)  # (H*W, B, 8h), a channels-last view
        gathered = zip(rows.chunk(2, -1), into_scan, strict=True)  # each direction its own gates
        sequence = torch.stack([part.index_select(0, index) for part, index in gathered])
        hidden = self.scan_diagonals(sequence, counts, W)  # (2, H*W, B, 4h) -> (2, H*W, B, h)
        right = F.pad(hidden[1], (0, 0, 0, 0, 0, 1))  # (H*W + 1, B, h): a zero row at the end
        combined = hidden[0].index_select(0, from_left) + right.index_select(0, from_right)
        combined = combined.view(H, W, B, -1).permute(2, 3, 0, 1)  # (B, h, H, W)
        return self.output(combined.to(x.dtype, memory_format=torch.channels_last))

    def scan_diagonals(self, sequence: Tensor, counts: tuple[int, ...], width: int) -> Tensor:
        """(D, H*W, B, 4h) diagonal-major input-to-state -> hidden states (D, H*W, B, h)."""
        D, _, B, _ = sequence.shape
        weight = self.scan.state_to_state_matrix()  # (D, 2h, 4h)
        h0, c0 = self.scan.initial_state(B, 1, sequence)  # (D, B, 1, h)
        h0, c0 = h0.transpose(1, 2), c0.transpose(1, 2)  # (D, 1, B, h)
        h = c = h0.new_zeros(D, 0, B, self.hidden)  # states of diagonal -1 (empty)
        first_row, outputs = 0, []
        # split, not slicing: its backward is one cat instead of a zero map per step.
        for s, input_gates in enumerate(sequence.split(counts, dim=1)):  # (D, n, B, 4h)
            n, previous_first_row = input_gates.shape[1], first_row
            first_row = max(0, s - width + 1)
            offset = first_row - previous_first_row  # 0 or 1
            # Previous diagonal's states covering rows first_row-1 .. first_row+n-1.
            h_ext = torch.cat([h0, h, h0], dim=1)[:, offset : offset + n + 1]  # (D, n+1, B, h)
            c_left = torch.cat([c0, c, c0], dim=1)[:, offset + 1 : offset + n + 1]  # (D, n, B, h)
            taps = torch.cat([h_ext[:, :n], h_ext[:, 1:]], dim=-1)  # (D, n, B, 2h): r-1, r
            h, c = lstm_step(
                input_gates.reshape(D, n * B, -1),
                taps.view(D, n * B, -1),
                weight,
                c_left.reshape(D, n * B, -1),
            )
            h, c = h.view(D, n, B, -1), c.view(D, n, B, -1)
            outputs.append(h)
        return torch.cat(outputs, dim=1)  # (D, H*W, B, h) diagonal-major

    def start_sampling(self, n: int, height: int, width: int, like: Tensor) -> dict[str, Tensor]:
        """The cache of `sample_at`, in image coordinates (initial state outside the image)."""
        h0, c0 = (state[:, :, 0] for state in self.scan.initial_state(n, 1, like))  # (D, n, h)
        # Left-to-right states of row i at columns -1..W-1 (column -1: the initial state).
        h, c = (state[0, :, None].repeat(1, width + 1, 1) for state in (h0, c0))  # (n, W+1, h)
        cache = dict(h0=h0, c0=c0, h=h, c=c, h_above=h[:, 1:].clone())  # row -1: initial state
        cache["right_above"] = h0.new_zeros(n, width, self.hidden)  # zero: the one-row shift
        cache["right_gates"] = like.new_empty(n, width, 4 * self.hidden)  # row i, right-to-left
        return cache

    def sample_at(self, cache: dict[str, Tensor], i: int, j: int, x: Tensor) -> Tensor:
        """Layer input (n, 2h) at (i, j) -> output (n, 2h): the left-to-right step at (i, j) plus
        the right-to-left state of (i-1, j)."""
        left_gates, cache["right_gates"][:, j] = self.input_to_state.at(x).chunk(2, -1)
        taps = torch.cat([cache["h_above"][:, j], cache["h"][:, j]], -1)  # (i-1, j), (i, j-1)
        weight = self.scan.state_to_state_matrix()[:1]
        h, c = lstm_step(left_gates[None], taps[None], weight, cache["c"][None, :, j])
        cache["h"][:, j + 1], cache["c"][:, j + 1] = h[0], c[0]
        return self.output.at(h[0] + cache["right_above"][:, j])

    def finish_row(self, cache: dict[str, Tensor], i: int) -> None:
        """Scan row i right to left (it reaches the output one row down, after the whole row)."""
        width = cache["right_above"].shape[1]
        weight = self.scan.state_to_state_matrix()[1:]
        above = cache["right_above"] if i else cache["h0"][1, :, None].expand_as(cache["h_above"])
        h, c = cache["h0"][1], cache["c0"][1]  # (n, h), right of the last column
        right = torch.empty_like(cache["right_above"])  # (n, W, h)
        for j in reversed(range(width)):
            taps = torch.cat([above[:, j], h], -1)  # (n, 2h): r-1, r
            h, c = lstm_step(cache["right_gates"][None, :, j], taps[None], weight, c[None])
            h, c = h[0], c[0]
            right[:, j] = h
        cache["right_above"], cache["h_above"] = right, cache["h"][:, 1:].clone()
