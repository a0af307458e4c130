"""Diagonal geometry, the LSTM step and the scans against hand-written references."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pixelrnn_model.conv_lstm import ConvLSTMScan, lstm_step
from pixelrnn_model.diagonal_lstm import DiagonalBiLSTM, diagonal_gathers


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): row r takes row r-1; row 0 becomes zeros."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def test_diagonal_order_visits_the_skewed_columns_in_order():
    # 2x3 image, raster indices [[0 1 2] [3 4 5]]; skewed columns: {0}, {1, 3}, {2, 4}, {5}.
    into_scan, raster, from_right, counts = diagonal_gathers(2, 3, torch.device("cpu"))
    assert into_scan[0].tolist() == [0, 1, 3, 2, 4, 5]
    assert into_scan[1].tolist() == [2, 1, 5, 0, 4, 3]  # the mirrored image's diagonals
    assert counts == (1, 2, 2, 1)
    assert torch.equal(into_scan[0][raster], torch.arange(6))
    # (r, j) reads the right-to-left state of (r-1, j); row 0 reads the zero row 6.
    assert from_right.tolist() == [6, 6, 6, 3, 1, 0]


def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor):
    """The cell alone through `lstm_step`: no taps (k*h = 0), so the gates are the input's."""
    D, M, four_h = gates.shape
    no_taps = gates.new_zeros(D, M, 0)
    return lstm_step(gates, no_taps, gates.new_zeros(D, 0, four_h), c_prev)


def test_lstm_cell_matches_a_hand_computed_step():
    # h = 1; gates [o, f, i, g]
    gates = torch.tensor([[[0.5, -1.0, 2.0, 0.3]]], dtype=torch.float64)
    c_prev = torch.tensor([[[0.7]]], dtype=torch.float64)

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


def plain_lstm_step(input_gates, taps, weight, c_prev):
    """The step as textbook autograd operations."""
    return plain_lstm_cell(torch.baddbmm(input_gates, taps, weight), c_prev)


def step_inputs() -> tuple[torch.Tensor, ...]:
    """Random float64 (input_gates (2, 5, 12), taps (2, 5, 9), weight (2, 9, 12), c_prev)."""
    torch.manual_seed(0)
    shapes = (2, 5, 12), (2, 5, 9), (2, 9, 12), (2, 5, 3)
    return tuple(torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes)


@pytest.mark.parametrize("use_c", [True, False])
def test_step_backward_matches_autograd_of_the_plain_step(use_c):
    inputs = step_inputs()
    assert torch.autograd.gradcheck(lstm_step, inputs)
    weights = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)

    def loss(step):
        h, c = step(*inputs)
        return (h * weights[0]).sum() + ((c * weights[1]).sum() if use_c else 0)

    fused = torch.autograd.grad(loss(lstm_step), inputs)
    plain = torch.autograd.grad(loss(plain_lstm_step), inputs)
    for ours, theirs in zip(fused, plain, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # inference takes the buffer path without a node: same numbers
        for ours, theirs in zip(lstm_step(*inputs), plain_lstm_step(*inputs), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_step_double_backward_raises_instead_of_returning_wrong_numbers():
    # The step's backward is hand-written from saved values, so its gradient has no graph: a
    # second derivative through it must fail loudly, both through .backward() and through
    # autograd.grad with chosen inputs (which once_differentiable alone lets through silently).
    inputs = step_inputs()
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(lstm_step(*inputs)[0].sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.gradgradcheck(lstm_step, inputs)


def float64_scan(hidden: int, kernel: int, pad: tuple[int, int], directions: int, learned: bool):
    """A float64 ConvLSTMScan; a learned initial state is drawn at random (not zero)."""
    scan = ConvLSTMScan(hidden, kernel, pad, directions, learn_initial_state=learned).double()
    if learned:
        torch.nn.init.normal_(scan.initial_hidden)
        torch.nn.init.normal_(scan.initial_cell)
    return scan


@pytest.mark.parametrize("kernel, pad, directions", [(3, (1, 1), 1), (2, (1, 0), 2)])
@pytest.mark.parametrize("learned", [False, True])
def test_scan_matches_a_per_step_conv1d_reference(kernel, pad, directions, learned):
    torch.manual_seed(0)
    hidden, T, N, L = 4, 5, 2, 6
    scan = float64_scan(hidden, kernel, pad, directions, learned)
    inputs = torch.randn(directions, T, N, L, 4 * hidden, dtype=torch.float64)
    out = scan(inputs)
    for d in range(directions):
        h = c = torch.zeros(N, hidden, L, dtype=torch.float64)
        if learned:
            h = scan.initial_hidden[d].view(1, hidden, 1).expand(N, hidden, L)
            c = scan.initial_cell[d].view(1, hidden, 1).expand(N, hidden, L)
        for t in range(T):
            recurrent = F.conv1d(F.pad(h, pad), scan.state_to_state[d])  # (N, 4h, L)
            gates = inputs[d, t].permute(0, 2, 1) + recurrent
            h, c = plain_lstm_cell(gates.transpose(1, 2), c.transpose(1, 2))
            h, c = h.transpose(1, 2), c.transpose(1, 2)
            torch.testing.assert_close(out[d, t], h.transpose(1, 2), rtol=1e-12, atol=1e-12)


def _per_step_scan(scan: ConvLSTMScan, inputs: torch.Tensor) -> torch.Tensor:
    """The scan as plain autograd operations, one step at a time: (D, T, N, L, 4h) -> (D, T, N,
    L, h)."""
    D, T, N, L, _ = inputs.shape
    h, c = scan.initial_state(N, L, inputs)
    weight = scan.state_to_state_matrix()  # (D, k*h, 4h), rows (tap, channel)
    outputs = []
    for t in range(T):
        taps = F.pad(h, (0, 0, *scan.pad)).unfold(2, scan.kernel, 1)  # (D, N, L, h, k)
        taps = taps.transpose(3, 4).reshape(D, N * L, -1)  # (D, N*L, k*h), (tap, channel)
        gates = torch.baddbmm(inputs[:, t].reshape(D, N * L, -1), taps, weight)
        o, f, i, g = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c.reshape(D, N * L, -1) + torch.sigmoid(i) * torch.tanh(g)
        h = (torch.sigmoid(o) * torch.tanh(c)).view(D, N, L, -1)
        outputs.append(h)
    return torch.stack(outputs, dim=1)


@pytest.mark.parametrize(
    "kernel, pad, directions", [(3, (1, 1), 1), (2, (1, 0), 2), (5, (2, 2), 1), (3, (2, 0), 1)]
)
@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("batch_major", [False, True])
def test_scan_backward_matches_per_step_autograd(kernel, pad, directions, learned, batch_major):
    # The scan's hand-written backward through time against autograd on the per-step graph:
    # gradients of the input, the state-to-state weight and the learned initial state. With
    # batch_major the input is laid out (D, N, T, L, 4h) in memory, as a channels-last map gives
    # the Row LSTM, and its gradient must come back in that layout.
    torch.manual_seed(0)
    hidden, T, N, L = 4, 5, 3, 6
    scan = float64_scan(hidden, kernel, pad, directions, learned)
    shape = (directions, T, N, L, 4 * hidden)
    if batch_major:
        inputs = torch.randn(directions, N, T, L, 4 * hidden, dtype=torch.float64)
        inputs = inputs.transpose(1, 2).requires_grad_()
    else:
        inputs = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(directions, T, N, L, hidden, dtype=torch.float64)
    wrt = [inputs, *scan.parameters()]
    out = scan(inputs)
    ours = torch.autograd.grad((out * upstream).sum(), wrt)
    expected_out = _per_step_scan(scan, inputs)
    theirs = torch.autograd.grad((expected_out * upstream).sum(), wrt)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    assert len(ours) == (4 if learned else 2)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-10, atol=1e-12)
    assert out.stride(2) > out.stride(1) if batch_major else out.is_contiguous()
    assert ours[0].stride() == inputs.stride()


def test_flop_counter_sees_all_of_the_scans_products():
    # benchmarks/model_throughput.py reports GFLOP/s from torch's FlopCounterMode, which does
    # not count in-place products (baddbmm_): the fused scan must show the same work as the
    # per-step graph, forward and backward.
    torch.manual_seed(0)
    scan = ConvLSTMScan(6, 3, (1, 1), 1, learn_initial_state=True)
    inputs = torch.randn(1, 4, 2, 5, 24, requires_grad=True)

    def counted(run) -> int:
        with FlopCounterMode(display=False) as counter:
            run(scan, inputs).sum().backward()
        return counter.get_total_flops()

    expected = counted(_per_step_scan)
    assert expected > 0
    assert counted(ConvLSTMScan.__call__) == expected


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


@pytest.mark.parametrize("height, width", [(4, 6), (6, 3), (5, 5), (1, 4)])
def test_diagonal_bilstm_equals_the_skewed_map_reference(height, width):
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
    (ours,) = torch.autograd.grad(actual, x, upstream)
    (theirs,) = torch.autograd.grad(expected, x, upstream)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
