"""Diagonal geometry, the LSTM cell and the scans against hand-written references."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pixelrnn_model.conv_lstm import CellBuffers, ConvLSTMScan, cell, cell_backward
from pixelrnn_model.diagonal_lstm import DiagonalBiLSTM, diagonal_slots
from pixelrnn_model.row_lstm import RowLSTM, row_lstm_stack


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): row r takes row r-1; row 0 becomes zeros."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def test_diagonal_slots_of_a_2x3_image():
    # raster indices [[0 1 2] [3 4 5]]; diagonals {0}, {1, 3}, {2, 4}, {5}; slots 0, 1 are pads,
    # then each diagonal's positions by row and one pad: 2:(0) 3:pad 4:(1) 5:(3) 6:pad ...
    geo = diagonal_slots(2, 3, torch.device("cpu"))
    assert geo.slot_of[0].tolist() == [2, 4, 7, 5, 8, 10]
    assert geo.slot_of[1].tolist() == [7, 4, 2, 10, 8, 5]  # (r, j): the slot of (r, 2 - j)
    assert geo.steps == ((1, 2, 0, 1), (2, 4, 1, 2), (2, 7, 3, 4), (1, 10, 7, 8))
    assert geo.slots == 12 and geo.pads.tolist() == [0, 1, 3, 6, 9, 11]
    assert geo.above_right.tolist() == [12, 12, 12, 7, 4, 2]  # row 0 reads the zero slot


@pytest.mark.parametrize("height, width", [(1, 1), (1, 5), (5, 1), (3, 3), (4, 7), (7, 4)])
def test_every_diagonal_taps_its_up_and_left_neighbours_or_a_pad(height, width):
    geo = diagonal_slots(height, width, torch.device("cpu"))
    slot_of = geo.slot_of[0].view(height, width)
    position = {int(slot_of[r, j]): (r, j) for r in range(height) for j in range(width)}
    assert len(position) == height * width and not set(position) & set(geo.pads.tolist())
    assert set(position) | set(geo.pads.tolist()) == set(range(geo.slots))
    for s, (n, out, up, left) in enumerate(geo.steps):
        for a in range(n):
            r, j = position[out + a]
            assert r + j == s
            assert position.get(up + a, "pad") == ((r - 1, j) if r else "pad")
            assert position.get(left + a, "pad") == ((r, j - 1) if j else "pad")
    up, left = geo.taps.tolist()
    for n, out, up_start, left_start in geo.steps:
        assert up[out : out + n] == list(range(up_start, up_start + n))
        assert left[out : out + n] == list(range(left_start, left_start + n))
    for pad in geo.pads.tolist():  # a pad has no taps: the zero slot
        assert up[pad] == left[pad] == geo.slots


def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor):
    """`cell` into new buffers: (M, 4h) pre-activations, (M, h) -> (h, c)."""
    activations, (c, tanh_c, h) = torch.empty_like(gates), (torch.empty_like(c_prev) for _ in "ctc")
    cell(gates, c_prev, activations, c, tanh_c, h)
    return h, c


def test_lstm_cell_matches_a_hand_computed_step():
    # h = 1; gates [o, f, i, g]
    gates = torch.tensor([[0.5, -1.0, 2.0, 0.3]], dtype=torch.float64)
    c_prev = torch.tensor([[0.7]], dtype=torch.float64)

    def sig(v):
        return 1 / (1 + math.exp(-v))

    c = sig(-1.0) * 0.7 + sig(2.0) * math.tanh(0.3)  # tanh on the content gate only
    h = sig(0.5) * math.tanh(c)
    h_out, c_out = lstm_cell(gates, c_prev)
    assert c_out.item() == pytest.approx(c, abs=1e-12)
    assert h_out.item() == pytest.approx(h, abs=1e-12)


def plain_lstm_cell(gates, c_prev):
    """The textbook cell, differentiated by autograd op by op."""
    o, f, i, g = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def test_cell_buffers_match_the_plain_cell():
    # The samplers' cell (views made once, pre-activations written into its buffer).
    torch.manual_seed(0)
    pre, c_prev = torch.randn(5, 12, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    buffers = CellBuffers(5, 3, pre)
    buffers.pre.copy_(pre)
    h, c = torch.empty_like(c_prev), torch.empty_like(c_prev)
    buffers(c_prev, c, h)
    for ours, theirs in zip((h, c), plain_lstm_cell(pre, c_prev), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_cell_backward_matches_autograd_of_the_plain_cell():
    # `cell_backward` (dL/dpre and the total dL/dc) against autograd through the textbook cell,
    # with gradients arriving at both h and c.
    torch.manual_seed(0)
    pre, c_prev = torch.randn(5, 12, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    grad_h, grad_c = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    activations, (c, tanh_c, h) = torch.empty_like(pre), (torch.empty_like(c_prev) for _ in "chc")
    cell(pre.clone(), c_prev, activations, c, tanh_c, h)  # its pre is scratch
    grad_pre = torch.empty_like(pre)
    grad_cell = cell_backward(grad_h, grad_c, activations, c_prev, tanh_c, grad_pre)
    inputs = pre.clone().requires_grad_(), c_prev.clone().requires_grad_()
    h_ref, c_ref = plain_lstm_cell(*inputs)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=1e-12, atol=1e-12)
    expected = torch.autograd.grad((h_ref * grad_h).sum() + (c_ref * grad_c).sum(), inputs)
    torch.testing.assert_close(grad_pre, expected[0], rtol=1e-12, atol=1e-12)
    forget = activations[:, 3:6]
    torch.testing.assert_close(grad_cell * forget, expected[1], rtol=1e-12, atol=1e-12)


def float64_row_layers(count: int, kernel: int, learned: bool, hidden: int = 3) -> list[RowLSTM]:
    """Float64 Row LSTM layers (3 colours); a learned initial state is drawn at random."""
    layers = [RowLSTM(2 * hidden, hidden, 3, kernel, learned).double() for _ in range(count)]
    for layer in layers:
        for parameter in layer.parameters():
            torch.nn.init.normal_(parameter, std=0.5)
    return layers


def per_step_row_lstm(layer: RowLSTM, x: torch.Tensor) -> torch.Tensor:
    """One Row LSTM layer as plain autograd operations, a Conv1d per row: (B, 2h, H, W) ->
    (B, 2h, H, W). The masked input-to-state conv is the dense one (weight * mask)."""
    conv = layer.input_to_state
    gates = F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=conv.padding)  # (B, 4h, H, W)
    B, _, H, W = gates.shape
    hidden, scan = layer.scan.hidden, layer.scan
    h0, c0 = scan.initial_vectors(x)
    h = h0[0].view(1, hidden, 1).expand(B, hidden, W)
    c = c0[0].view(1, hidden, 1).expand(B, hidden, W)
    rows = []
    for i in range(H):
        step = gates[:, :, i] + F.conv1d(F.pad(h, scan.pad), scan.state_to_state[0])  # (B, 4h, W)
        h, c = plain_lstm_cell(step.transpose(1, 2), c.transpose(1, 2))
        h, c = h.transpose(1, 2), c.transpose(1, 2)
        rows.append(h)
    hidden_map = torch.stack(rows, dim=2)  # (B, h, H, W)
    out = layer.output
    return F.conv2d(hidden_map, out.weight * out.mask, out.bias)


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("layers, height", [(1, 4), (3, 2), (3, 5), (2, 1)])
def test_row_wavefront_matches_per_layer_per_row_autograd(
    kernel, learned, residual, layers, height
):
    # The wavefront over a stack (layer l at row t - l, all layers in one node, a hand-written
    # backward) against each layer alone, row by row, through autograd: outputs and the
    # gradients of the input and of every parameter (the learned initial state included).
    torch.manual_seed(0)
    stack = float64_row_layers(layers, kernel, learned)
    x = torch.randn(2, 6, height, 5, dtype=torch.float64, requires_grad=True)
    stacked = row_lstm_stack(x, stack, residual)  # (B, H, W, L, 2h)
    assert stacked.shape == (2, height, 5, layers, 6) and stacked.is_contiguous()
    streams = [s.permute(0, 3, 1, 2) for s in stacked.unbind(3)]
    expected, stream = [], x
    for layer in stack:
        out = per_step_row_lstm(layer, stream)
        stream = stream + out if residual else out
        expected.append(stream)
    upstream = torch.randn(layers, *x.shape, dtype=torch.float64)
    wrt = [x] + [p for layer in stack for p in layer.parameters()]
    ours = torch.autograd.grad((torch.stack(streams) * upstream).sum(), wrt)
    theirs = torch.autograd.grad((torch.stack(expected) * upstream).sum(), wrt)
    for mine, reference in zip(streams, expected, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-12)


def test_scans_refuse_double_backward():
    # The scans' backwards are hand-written from saved values, so their gradients have no graph:
    # a second derivative must fail loudly, through autograd.grad with create_graph as well.
    torch.manual_seed(0)
    x = torch.randn(1, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    for layer in (float64_row_layers(1, 3, True)[0], DiagonalBiLSTM(6, 3, 3, True).double()):
        with pytest.raises(RuntimeError, match="differentiable once"):
            torch.autograd.grad(layer(x).sum(), x, create_graph=True)


def test_flop_counter_sees_all_of_the_wavefronts_products():
    # benchmarks/model_throughput.py reports GFLOP/s from torch's FlopCounterMode: the wavefront
    # must show all of its work. Per position and layer the forward is three products (live
    # input taps kx*2h -> 4h, state taps k*h -> 4h, h -> 2h); the backward twice that.
    torch.manual_seed(0)
    hidden, kernel, count, (B, H, W) = 3, 3, 2, (2, 4, 5)
    stack = float64_row_layers(count, kernel, learned=True, hidden=hidden)
    x = torch.randn(B, 2 * hidden, H, W, dtype=torch.float64, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        row_lstm_stack(x, stack, residual=True).sum().backward()
    live_taps = stack[0].input_to_state.live[1].stop - stack[0].input_to_state.live[1].start
    per_position = 2 * (live_taps * 2 * hidden * 4 * hidden + kernel * hidden * 4 * hidden)
    per_position += 2 * hidden * 2 * hidden
    assert counter.get_total_flops() == 3 * per_position * count * B * H * W


def test_scan_rejects_padding_that_changes_length():
    with pytest.raises(ValueError, match="padding"):
        ConvLSTMScan(4, 3, (1, 0))


def skewed_direction_reference(gates, weight):
    """One Diagonal LSTM direction on the zero-padded skewed map, a Conv1d per skewed column.

    gates: (B, 4h, H, W) input-to-state; weight: (4h, h, 2) state-to-state -> (B, h, H, W).
    """
    B, four_h, H, W = gates.shape
    skewed = gates.new_zeros(B, four_h, H, W + H - 1)
    for r in range(H):
        skewed[:, :, r, r : r + W] = gates[:, :, r]
    h = c = gates.new_zeros(B, four_h // 4, H)
    columns = []
    for column in range(W + H - 1):
        step = skewed[:, :, :, column] + F.conv1d(F.pad(h, (1, 0)), weight)  # (B, 4h, H)
        h, c = plain_lstm_cell(step.transpose(1, 2), c.transpose(1, 2))
        h, c = h.transpose(1, 2), c.transpose(1, 2)
        columns.append(h)
    hidden = torch.stack(columns, dim=3)  # (B, h, H, W+H-1)
    return torch.stack([hidden[:, :, r, r : r + W] for r in range(H)], dim=2)


@pytest.mark.parametrize("height, width", [(4, 6), (6, 3), (5, 5), (1, 4), (4, 1), (1, 1)])
def test_diagonal_bilstm_equals_the_skewed_map_reference(height, width):
    # Outputs and the input's and every weight's gradients against one Conv1d per skewed column.
    torch.manual_seed(0)
    layer = DiagonalBiLSTM(channels=6, hidden=3, colours=3, learn_initial_state=False).double()
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    x = torch.randn(2, 6, height, width, dtype=torch.float64, requires_grad=True)
    left, right = layer.input_to_state(x).chunk(2, dim=1)
    weight = layer.scan.state_to_state
    forward = skewed_direction_reference(left, weight[0])
    backward = skewed_direction_reference(right.flip(3), weight[1]).flip(3)
    expected = layer.output(forward + shift_down(backward))
    actual = layer(x)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(expected)
    wrt = [x, *layer.parameters()]
    ours = torch.autograd.grad(actual, wrt, upstream)
    theirs = torch.autograd.grad(expected, wrt, upstream)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("height, width", [(3, 4), (4, 2)])
def test_diagonal_scan_gradients_with_a_learned_initial_state(height, width):
    # gradcheck (finite differences) of the hand-written backward, the initial state included.
    torch.manual_seed(0)
    layer = DiagonalBiLSTM(channels=6, hidden=3, colours=3, learn_initial_state=True).double()
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    x = torch.randn(1, 6, height, width, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]
    values = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def run(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, (x, *values))
