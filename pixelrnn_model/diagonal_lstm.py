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
def diagonal_order(
    height: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Raster indices sorted by diagonal s = r + j, then by row; its inverse; diagonal lengths
    (cached: every layer of every forward pass uses the same geometry).

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

    Returns:
        into_scan: int64 (2, H*W) raster index of each diagonal-major row, left-to-right
            direction, then right-to-left (which scans the width-flipped image).
        from_left: int64 (H*W,) for each raster position, its row in the left-to-right scan.
        from_right: int64 (H*W,) for each raster position (r, j), the row of (r-1, j) in the
            right-to-left scan: the paper's one-row shift; row 0 points at H*W, a zero row.
        counts: H+W-1 diagonal lengths.
    """
    order, raster, counts = diagonal_order(height, width, device)
    flipped = order // width * width + (width - 1 - order % width)  # same diagonals, mirrored
    from_right = torch.empty_like(raster)
    from_right[flipped] = torch.arange(order.numel(), device=device)
    shifted = torch.full_like(from_right, order.numel())  # row 0: nothing above it
    shifted[width:] = from_right[:-width]
    return torch.stack([order, flipped]), raster, shifted, counts


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
        into_scan, from_left, from_right, counts = bidirectional_gathers(H, W, x.device)
        gates = self.input_to_state(x)  # (B, 8h, H, W)
        rows = gates.permute(2, 3, 0, 1).reshape(H * W, B, -1)  # (H*W, B, 8h), a channels-last view
        gathered = zip(rows.chunk(2, -1), into_scan, strict=True)  # each direction its own gates
        sequence = torch.stack([part.index_select(0, index) for part, index in gathered])
        hidden = self.scan_diagonals(sequence, counts, W)  # (2, H*W, B, 4h) -> (2, H*W, B, h)
        right = F.pad(hidden[1], (0, 0, 0, 0, 0, 1))  # (H*W + 1, B, h): a zero row at the end
        combined = hidden[0].index_select(0, from_left) + right.index_select(0, from_right)
        combined = combined.view(H, W, B, -1).permute(2, 3, 0, 1)  # (B, h, H, W)
        return self.output(combined.contiguous(memory_format=torch.channels_last))

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
        return {
            "h0": h0,
            "c0": c0,
            "h_above": h0[0, :, None].expand(n, width, self.hidden),  # left-to-right, row i-1
            "right_above": h0.new_zeros(n, width, self.hidden),  # right-to-left, row i-1
            "h": h0.new_empty(n, width, self.hidden),  # left-to-right, row i
            "c": h0.new_empty(n, width, self.hidden),
            "right_gates": like.new_empty(n, width, 4 * self.hidden),  # row i's input-to-state
        }

    def sample_at(self, cache: dict[str, Tensor], i: int, j: int, x: Tensor) -> Tensor:
        """Layer input (n, 2h) at (i, j) -> output (n, 2h): the left-to-right step at (i, j) plus
        the right-to-left state of (i-1, j)."""
        left_gates, cache["right_gates"][:, j] = self.input_to_state.at(x).chunk(2, -1)
        h_left, c_left = (cache["h"][:, j - 1], cache["c"][:, j - 1]) if j else (
            cache["h0"][0], cache["c0"][0])  # fmt: skip
        taps = torch.cat([cache["h_above"][:, j], h_left], -1)  # (n, 2h): r-1, r
        weight = self.scan.state_to_state_matrix()[:1]
        h, c = lstm_step(left_gates[None], taps[None], weight, c_left[None])
        cache["h"][:, j], cache["c"][:, j] = h[0], c[0]
        return self.output.at(h[0] + cache["right_above"][:, j])

    def finish_row(self, cache: dict[str, Tensor], i: int) -> None:
        """Scan row i right to left (it reaches the output one row down, after the whole row)."""
        width = cache["h"].shape[1]
        weight = self.scan.state_to_state_matrix()[1:]
        above = cache["right_above"] if i else cache["h0"][1, :, None].expand_as(cache["h"])
        h, c = cache["h0"][1], cache["c0"][1]  # (n, h), right of the last column
        right = torch.empty_like(cache["right_above"])  # (n, W, h)
        for j in reversed(range(width)):
            taps = torch.cat([above[:, j], h], -1)  # (n, 2h): r-1, r
            h, c = lstm_step(cache["right_gates"][None, :, j], taps[None], weight, c[None])
            h, c = h[0], c[0]
            right[:, j] = h
        cache["right_above"] = right
        cache["h_above"], cache["h"] = cache["h"], torch.empty_like(cache["h"])
