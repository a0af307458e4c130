"""The one LSTM recurrence shared by the Row LSTM and the Diagonal BiLSTM (section 3.1-3.2).

Both layers precompute their input-to-state term for the whole map, then scan it one step at a
time (rows for the Row LSTM, diagonals for the Diagonal LSTM). Each step is a single batched
matrix product: the k state-to-state taps of every position are gathered into one (k*h)-wide row,
and all directions of a bidirectional layer share one `baddbmm`. The Row LSTM's scan
(`ConvLSTMScan.forward`) is one autograd node with its own backward through time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def lstm_cell(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM update: sigmoid on the o, f, i gates, tanh on the content gate g.

    Under autograd this is one node with a hand-written backward (`_FusedLSTMCell`): the
    recurrences call it once per scan step, and nine autograd nodes per step cost more than
    their arithmetic at small h.

    Args:
        gates: (..., 4h) pre-activations ordered [o, f, i, g].
        c_prev: (..., h) previous cell state.

    Returns:
        (h, c): new hidden and cell state, each (..., h).
    """
    if torch.is_grad_enabled() and (gates.requires_grad or c_prev.requires_grad):
        return _FusedLSTMCell.apply(gates, c_prev)
    return _lstm_forward(gates, c_prev)[:2]


def _lstm_forward(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(h, c, sigmoid(o, f, i) (..., 3h), tanh(g) (..., h), tanh(c) (..., h))."""
    hidden = c_prev.shape[-1]
    gate_values = torch.sigmoid(gates[..., : 3 * hidden])  # (..., 3h): o, f, i
    output_gate, forget_gate, input_gate = gate_values.split(hidden, -1)
    content = torch.tanh(gates[..., 3 * hidden :])
    c = torch.addcmul(forget_gate * c_prev, input_gate, content)
    tanh_c = torch.tanh(c)
    return output_gate * tanh_c, c, gate_values, content, tanh_c


class _FusedLSTMCell(torch.autograd.Function):
    """`lstm_cell` as one autograd node; saves sigmoid(o, f, i), tanh(g), c_prev and tanh(c)."""

    @staticmethod
    def forward(ctx, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        h, c, gate_values, content, tanh_c = _lstm_forward(gates, c_prev)
        ctx.save_for_backward(gate_values, content, c_prev, tanh_c)
        return h, c

    @staticmethod
    def backward(ctx, grad_h: Tensor | None, grad_c: Tensor | None) -> tuple[Tensor, Tensor]:
        gate_values, content, c_prev, tanh_c = ctx.saved_tensors
        hidden = c_prev.shape[-1]
        output_gate, forget_gate, input_gate = gate_values.split(hidden, -1)
        if grad_h is None:
            grad_h = torch.zeros_like(tanh_c)
        # dL/dc = dL/dc (from the next step) + dL/dh * o * (1 - tanh(c)^2)
        grad_cell = grad_h * output_gate * (1 - tanh_c * tanh_c)
        if grad_c is not None:
            grad_cell = grad_cell + grad_c
        grad_gate_values = torch.cat(
            [grad_h * tanh_c, grad_cell * c_prev, grad_cell * content], dim=-1
        )  # (..., 3h): d/d(o, f, i)
        grad_gates = torch.cat(
            [
                grad_gate_values * gate_values * (1 - gate_values),
                grad_cell * input_gate * (1 - content * content),
            ],
            dim=-1,
        )  # (..., 4h)
        return grad_gates, grad_cell * forget_gate


class ConvLSTMScan(nn.Module):
    """LSTM over the T axis of a precomputed input-to-state map; the state-to-state conv
    (kernel k, zero padding `pad`) slides over the L axis of the previous step's state.

    Args:
        hidden: h, hidden channels per direction.
        kernel: k, taps of the state-to-state convolution.
        pad: (left, right) zero padding of the state before the convolution.
        directions: independent recurrences scanned together (2 for the BiLSTM).
        learn_initial_state: learn h_0 and c_0 (one vector per direction) instead of zeros.
    """

    def __init__(
        self,
        hidden: int,
        kernel: int,
        pad: tuple[int, int],
        directions: int = 1,
        learn_initial_state: bool = False,
    ):
        super().__init__()
        if pad[0] + pad[1] != kernel - 1:
            raise ValueError(f"padding {pad} does not keep the length for a kernel of {kernel}")
        self.hidden, self.kernel, self.pad = hidden, kernel, pad
        # Laid out like a Conv1d weight per direction: (D, 4h, h, k).
        self.state_to_state = nn.Parameter(torch.empty(directions, 4 * hidden, hidden, kernel))
        bound = 1.0 / (hidden * kernel) ** 0.5
        nn.init.uniform_(self.state_to_state, -bound, bound)
        if learn_initial_state:
            self.initial_hidden = nn.Parameter(torch.zeros(directions, hidden))
            self.initial_cell = nn.Parameter(torch.zeros(directions, hidden))
        else:
            self.initial_hidden = self.initial_cell = None

    def initial_state(self, batch: int, length: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(h_0, c_0), each (D, N, L, h)."""
        directions = self.state_to_state.shape[0]
        shape = (directions, batch, length, self.hidden)
        if self.initial_hidden is None:
            zeros = like.new_zeros(shape)
            return zeros, zeros
        expand = (directions, 1, 1, self.hidden)
        return (
            self.initial_hidden.view(expand).expand(shape).to(like.dtype),
            self.initial_cell.view(expand).expand(shape).to(like.dtype),
        )

    def state_to_state_matrix(self, dtype: torch.dtype) -> Tensor:
        """The state-to-state weight as (D, k*h, 4h), rows ordered (channel, tap)."""
        directions = self.state_to_state.shape[0]
        return (
            self.state_to_state.reshape(directions, 4 * self.hidden, -1).transpose(1, 2).to(dtype)
        )

    def cell(
        self, input_gates: Tensor, taps: Tensor, c_prev: Tensor, weight: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The LSTM update of M positions from their gathered state-to-state taps.

        Args:
            input_gates: (D, M, 4h) input-to-state term.
            taps: (D, M, h*k) previous states at the k taps, ordered (channel, tap).
            c_prev: (D, M, h) previous cell state of each position.
            weight: (D, k*h, 4h) from `state_to_state_matrix`.

        Returns:
            (h, c), each (D, M, h).
        """
        return lstm_cell(torch.baddbmm(input_gates, taps, weight), c_prev)

    def forward(self, input_to_state: Tensor) -> Tensor:
        """(D, T, N, L, 4h) -> hidden states (D, T, N, L, h).

        The whole scan is one autograd node (`_ScanFunction`): a per-step graph of pad, unfold,
        product and cell costs more in bookkeeping than the arithmetic at these sizes, and the
        state-to-state weight's gradient accumulates in place. Memory: the gathered taps, gate
        activations and cell states of every step, as the per-step graph saved.
        """
        _, _, N, L, _ = input_to_state.shape
        h0, c0 = self.initial_state(N, L, input_to_state)
        D, k = self.state_to_state.shape[0], self.kernel
        # (D, 4h, h, k) -> (D, k*h, 4h), rows ordered (tap, channel): each tap is a contiguous
        # block of the gathered row.
        weight = self.state_to_state.permute(0, 3, 2, 1).reshape(D, k * self.hidden, -1)
        return _scan(input_to_state, weight.to(input_to_state.dtype), h0, c0, self.pad[0])


@torch.compiler.disable
def _scan(x: Tensor, weight: Tensor, h0: Tensor, c0: Tensor, left: int) -> Tensor:
    """`_ScanFunction`, left to eager mode under torch.compile: traced, its H steps per layer
    unroll into one graph per model, and compiling the CIFAR Row LSTM took over 12 minutes of one
    core before it was stopped. The convolutions around it still compile."""
    return _ScanFunction.apply(x, weight, h0, c0, left)


class _ScanFunction(torch.autograd.Function):
    """`ConvLSTMScan.forward` with a hand-written backward through time.

    Forward saves, per step, the gathered taps (D, M, k*h), the gate activations (D, M, 4h),
    the previous cell state and tanh of the new one (D, M, h each), M = N*L: what the per-step
    graph saved, in preallocated buffers. The hidden states and the input's gradient are laid
    out in memory like the input (e.g. batch-major for a channels-last feature map), so the
    convolutions around the scan need no layout copies.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, h0: Tensor, c0: Tensor, left: int) -> Tensor:
        """x (D, T, N, L, 4h) with any strides, weight (D, k*h, 4h) rows (tap, channel),
        h0/c0 (D, N, L, h), left: zero padding before position 0 -> hidden (D, T, N, L, h)."""
        D, T, N, L, G = x.shape
        hid, M = G // 4, N * L
        k = weight.shape[1] // hid
        # Step-major buffers: every per-step slice is contiguous, as the out= products want.
        taps = x.new_zeros(T, D, N, L, k, hid)
        activations = x.new_empty(T, D, M, G)  # sigmoid(o, f, i), tanh(g)
        cells = x.new_empty(T + 1, D, M, hid)
        tanh_cells = x.new_empty(T, D, M, hid)
        ctx.order = _memory_order(x)
        hidden = _new_steps(x, (D, T, N, L, hid), ctx.order)
        cells[0] = c0.reshape(D, M, hid)
        previous = h0
        for t in range(T):
            _gather_taps(taps[t], previous, left)
            gates = activations[t]
            gates.view(D, N, L, G).copy_(x[:, t])
            # out=, not baddbmm_: torch's FLOP counter only sees the out-of-place overloads
            torch.baddbmm(gates, taps[t].view(D, M, -1), weight, out=gates)
            gates[..., : 3 * hid].sigmoid_()
            gates[..., 3 * hid :].tanh_()
            output_gate, forget_gate, input_gate, content = gates.split(hid, -1)
            torch.mul(forget_gate, cells[t], out=cells[t + 1]).addcmul_(input_gate, content)
            torch.tanh(cells[t + 1], out=tanh_cells[t])
            previous = hidden[:, t]
            previous.copy_((output_gate * tanh_cells[t]).view(D, N, L, hid))
        ctx.save_for_backward(weight, taps, activations, cells, tanh_cells)
        ctx.left = left
        return hidden

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hidden: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
        weight, taps, activations, cells, tanh_cells = ctx.saved_tensors
        T, D, N, L, k, hid = taps.shape
        M = N * L
        grad_x = _new_steps(activations, (D, T, N, L, 4 * hid), ctx.order)
        grad_weight = torch.zeros_like(weight)
        grad_taps = activations.new_empty(D, M, k * hid)
        grad_h = grad_hidden.new_zeros(D, M, hid)  # from the next step, through its taps
        grad_c = grad_hidden.new_zeros(D, M, hid)
        weight_t = weight.transpose(1, 2)  # (D, 4h, k*h)
        for t in reversed(range(T)):
            sigmoids = activations[t, :, :, : 3 * hid]  # (D, M, 3h): o, f, i
            output_gate, forget_gate, input_gate, content = activations[t].split(hid, -1)
            tanh_c = tanh_cells[t]
            grad_h = grad_h + grad_hidden[:, t].reshape(D, M, hid)
            # dL/dc = dL/dc (from the next step) + dL/dh * o * (1 - tanh(c)^2)
            grad_cell = torch.addcmul(grad_c, grad_h * output_gate, 1 - tanh_c * tanh_c)
            grad_sigmoids = torch.cat(
                [grad_h * tanh_c, grad_cell * cells[t], grad_cell * content], dim=-1
            )  # (D, M, 3h): d/d(o, f, i)
            grad_gates = torch.cat(
                [
                    grad_sigmoids * sigmoids * (1 - sigmoids),
                    grad_cell * input_gate * (1 - content * content),
                ],
                dim=-1,
            )  # (D, M, 4h)
            grad_c = grad_cell * forget_gate
            grad_x[:, t] = grad_gates.view(D, N, L, -1)
            step_taps = taps[t].view(D, M, -1)
            torch.baddbmm(grad_weight, step_taps.transpose(1, 2), grad_gates, out=grad_weight)
            torch.bmm(grad_gates, weight_t, out=grad_taps)
            grad_h = _scatter_taps(grad_taps.view(D, N, L, k, hid), left=ctx.left).view(D, M, hid)
        return grad_x, grad_weight, grad_h.view(D, N, L, hid), grad_c.view(D, N, L, hid), None


def _memory_order(x: Tensor) -> list[int]:
    """x's first four dimensions, outermost in memory first."""
    return sorted(range(4), key=lambda d: -x.stride(d))


def _new_steps(like: Tensor, shape: tuple[int, ...], order: list[int]) -> Tensor:
    """An empty tensor of `shape` (D, T, N, L, channels), its first four dimensions ordered in
    memory by `order` (outermost first), channels innermost."""
    physical = like.new_empty([shape[d] for d in order] + [shape[4]])
    return physical.permute([order.index(d) for d in range(4)] + [4])


def _gather_taps(taps: Tensor, h: Tensor, left: int) -> None:
    """taps[..., l, j, :] = h[..., l + j - left, :] (zero outside 0..L-1), in place.

    taps: (D, N, L, k, h), zero where no state is read (positions past the ends stay zero).
    h: (D, N, L, h).
    """
    L, k = h.shape[2], taps.shape[3]
    for j in range(k):
        shift = j - left
        if shift >= 0:
            taps[:, :, : L - shift, j] = h[:, :, shift:]
        else:
            taps[:, :, -shift:, j] = h[:, :, : L + shift]


def _scatter_taps(grad_taps: Tensor, left: int) -> Tensor:
    """The adjoint of `_gather_taps`: (D, N, L, k, h) -> (D, N, L, h)."""
    L, k = grad_taps.shape[2], grad_taps.shape[3]
    grad_h = grad_taps[:, :, :, left].clone()
    for j in range(k):
        shift = j - left
        if shift > 0:
            grad_h[:, :, shift:] += grad_taps[:, :, : L - shift, j]
        elif shift < 0:
            grad_h[:, :, : L + shift] += grad_taps[:, :, -shift:, j]
    return grad_h
