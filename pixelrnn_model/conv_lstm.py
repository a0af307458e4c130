"""The convolutional LSTM step of the Row LSTM and the Diagonal BiLSTM (section 3.1-3.2).

A step: input-to-state gates + each position's k neighbouring states ("taps") times the
state-to-state matrix, then the LSTM cell; `_step` and its adjoint `_step_backward` are written
once. The Row LSTM scans with them in one autograd node (`ConvLSTMScan.forward`); the Diagonal
BiLSTM and the cached samplers call `lstm_step`. Under autocast the products run in bf16, and
activations, cell states and the weight's gradient sums stay in float32 (`state_dtype`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of states and gradient sums for products in `dtype`: float32 or wider."""
    return torch.promote_types(dtype, torch.float32)


def _step(input_gates, taps, weight, c_prev, activations, c, tanh_c) -> Tensor:
    """One step for M positions into preallocated buffers: the LSTM cell (sigmoid on o, f, i,
    tanh on the content gate g) of input_gates + taps @ weight. input_gates (D, M, 4h) [o, f, i,
    g], taps (D, M, k*h), weight (D, k*h, 4h), c_prev (D, M, h); the buffers activations
    (D, M, 4h), c and tanh_c (D, M, h) receive sigmoid(o, f, i) and tanh(g), c, tanh(c).
    Returns h = sigmoid(o) * tanh(c), (D, M, h)."""
    activations.view_as(input_gates).copy_(input_gates)
    _add_product(activations, taps, weight)
    hidden = c_prev.shape[-1]
    activations[..., : 3 * hidden].sigmoid_()
    activations[..., 3 * hidden :].tanh_()
    output_gate, forget_gate, input_gate, content = activations.split(hidden, -1)
    torch.mul(forget_gate, c_prev, out=c).addcmul_(input_gate, content)  # f * c_prev + i * g
    torch.tanh(c, out=tanh_c)
    return output_gate * tanh_c


def _step_backward(grad_h, grad_c, saved, grad_weight) -> tuple[Tensor, Tensor, Tensor]:
    """The adjoint of `_step` from its saved (taps, weight, c_prev, activations, tanh_c): returns
    d/d (input_gates, taps, c_prev) and adds d/d weight to `grad_weight` (state dtype)."""
    taps, weight, c_prev, activations, tanh_c = saved
    hidden = c_prev.shape[-1]
    sigmoids = activations[..., : 3 * hidden]  # (D, M, 3h): o, f, i
    output_gate, forget_gate, input_gate, content = activations.split(hidden, -1)
    # dL/dc = dL/dc (from the next step) + dL/dh * o * (1 - tanh(c)^2)
    grad_cell = torch.addcmul(grad_c, grad_h * output_gate, 1 - tanh_c * tanh_c)
    grad_sigmoids = torch.cat([grad_h * tanh_c, grad_cell * c_prev, grad_cell * content], -1)
    grad_gates = torch.cat(
        [grad_sigmoids * sigmoids * (1 - sigmoids), grad_cell * input_gate * (1 - content**2)], -1
    ).to(taps.dtype)  # (D, M, 4h)
    _add_product(grad_weight, taps.transpose(1, 2), grad_gates)
    return grad_gates, torch.bmm(grad_gates, weight.transpose(1, 2)), grad_cell * forget_gate


def _add_product(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out += a @ b, batched (D, m, n) @ (D, n, p); `out` may be wider than a and b."""
    if out.dtype == a.dtype:
        # out=, not baddbmm_: torch's FLOP counter only sees the out-of-place overloads
        torch.baddbmm(out, a, b, out=out)
    else:
        out += torch.bmm(a, b)


def _new_step(input_gates: Tensor, taps: Tensor, weight: Tensor, c_prev: Tensor):
    """`_step` into new buffers -> (h, c, the values `_step_backward` needs)."""
    dtype, state = input_gates.dtype, state_dtype(input_gates.dtype)
    activations = input_gates.new_empty(input_gates.shape, dtype=state)
    c, tanh_c = (c_prev.new_empty(c_prev.shape, dtype=state) for _ in range(2))
    taps, weight, c_prev = taps.to(dtype), weight.to(dtype), c_prev.to(state)
    h = _step(input_gates, taps, weight, c_prev, activations, c, tanh_c)
    return h, c, (taps, weight, c_prev, activations, tanh_c)


def _differentiable_once(backward):
    """A backward that raises as soon as a graph of the gradient is requested (stricter than
    `once_differentiable`, which raises only when a second backward reaches its node: what
    `autograd.grad` with chosen inputs, as in gradgradcheck or gradient penalties, skips)."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the PixelRNN LSTM step is differentiable once (its backward is hand-written): "
                "double backward through a Row LSTM or Diagonal BiLSTM is not supported"
            )
        return backward(ctx, *grads)

    return wrapper


class _Step(torch.autograd.Function):
    """`lstm_step` as one autograd node; its backward is `_step_backward` on the saved values."""

    @staticmethod
    def forward(ctx, input_gates, taps, weight, c_prev):
        with torch.autocast(input_gates.device.type, enabled=False):
            h, c, saved = _new_step(input_gates, taps, weight, c_prev)
        ctx.save_for_backward(*saved)
        ctx.dtypes = taps.dtype, weight.dtype, c_prev.dtype
        return h, c

    @staticmethod
    @_differentiable_once
    def backward(ctx, grad_h, grad_c):
        saved = ctx.saved_tensors
        grad_weight = torch.zeros_like(saved[1], dtype=saved[2].dtype)  # (D, k*h, 4h)
        grad_gates, grad_taps, grad_c_prev = _step_backward(grad_h, grad_c, saved, grad_weight)
        grads = zip((grad_taps, grad_weight, grad_c_prev), ctx.dtypes, strict=True)
        return grad_gates, *(grad.to(dtype) for grad, dtype in grads)


def lstm_step(
    input_gates: Tensor, taps: Tensor, weight: Tensor, c_prev: Tensor
) -> tuple[Tensor, Tensor]:
    """One convolutional LSTM step for M positions: the cell of input_gates + taps @ weight;
    under autograd, one node with a hand-written backward (differentiable once).

    Args:
        input_gates: (D, M, 4h) input-to-state pre-activations [o, f, i, g].
        taps: (D, M, k*h) previous states at each position's k taps, ordered (tap, channel).
        weight: (D, k*h, 4h) from `ConvLSTMScan.state_to_state_matrix`.
        c_prev: (D, M, h) previous cell state.

    Returns:
        (h, c), each (D, M, h), in `state_dtype(input_gates.dtype)`.
    """
    inputs = input_gates, taps, weight, c_prev
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _Step.apply(*inputs)
    return _new_step(*inputs)[:2]


class ConvLSTMScan(nn.Module):
    """A convolutional LSTM's state-to-state weight and initial state, and its scan (`forward`,
    the Row LSTM's) over T steps, the k-tap state-to-state conv sliding over L positions. The
    Diagonal BiLSTM keeps its weights here but calls `lstm_step` per diagonal.

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
        # Stored like a Conv1d weight per direction, (D, 4h, h, k), as checkpoints hold it.
        self.state_to_state = nn.Parameter(torch.empty(directions, 4 * hidden, hidden, kernel))
        bound = 1.0 / (hidden * kernel) ** 0.5
        nn.init.uniform_(self.state_to_state, -bound, bound)
        learned = (nn.Parameter(torch.zeros(directions, hidden)) for _ in range(2))
        self.initial_hidden, self.initial_cell = learned if learn_initial_state else (None, None)
        self.frozen: Tensor | None = None

    def state_to_state_matrix(self) -> Tensor:
        """The state-to-state weight as (D, k*h, 4h), rows ordered (tap, channel) like the taps."""
        if self.frozen is not None:
            return self.frozen
        directions = self.state_to_state.shape[0]
        matrix = self.state_to_state.permute(0, 3, 2, 1)  # (D, k, h, 4h)
        return matrix.reshape(directions, self.kernel * self.hidden, 4 * self.hidden)

    def freeze(self, frozen: bool) -> None:
        """Compute the matrix once and reuse it until unfrozen (sampling: weights are fixed)."""
        self.frozen = None
        self.frozen = self.state_to_state_matrix().detach() if frozen else None

    def initial_state(self, batch: int, length: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(h_0, c_0), each (D, N, L, h), in `state_dtype(like.dtype)`."""
        directions = self.state_to_state.shape[0]
        shape, dtype = (directions, batch, length, self.hidden), state_dtype(like.dtype)
        if self.initial_hidden is None:
            return (like.new_zeros(shape, dtype=dtype),) * 2
        states = self.initial_hidden, self.initial_cell  # each (D, h)
        return tuple(state[:, None, None].expand(shape).to(dtype) for state in states)

    def gather_taps(self, h: Tensor) -> Tensor:
        """The taps of every position: (D, N, L, h) states -> (D, N, L, k*h), zero padded."""
        D, N, L, hidden = h.shape
        taps = h.new_zeros(D, N, L, self.kernel, hidden)
        _gather_taps(taps, h, self.pad[0])
        return taps.view(D, N, L, -1)

    @torch.compiler.disable  # traced, the steps unroll: compiling the CIFAR Row LSTM ran 12+ min
    def forward(self, input_to_state: Tensor) -> Tensor:
        """(D, T, N, L, 4h) -> hidden states (D, T, N, L, h), in the input's dtype.

        The whole scan is one autograd node (`_ScanFunction`): per-step nodes cost more in
        bookkeeping than the arithmetic at these sizes, and the weight's gradient accumulates in
        place. Memory: each step's taps, activations and cell states, as per-step nodes save.
        """
        h0, c0 = self.initial_state(*input_to_state.shape[2:4], input_to_state)
        weight = self.state_to_state_matrix()
        return _ScanFunction.apply(input_to_state, weight, h0, c0, self.pad[0])


class _ScanFunction(torch.autograd.Function):
    """`ConvLSTMScan.forward`: `_step` per step, and a backward through time of `_step_backward`.

    Forward saves each step's taps (D, M, k*h), activations (D, M, 4h), previous cell state and
    tanh of the new one (D, M, h each), M = N*L, in preallocated step-major buffers (each step's
    slice is contiguous, as the out= products want). The hidden states and the input's gradient
    are laid out in memory like the input (batch-major for a channels-last map), so the
    convolutions around the scan need no layout copies.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, h0: Tensor, c0: Tensor, left: int) -> Tensor:
        """x (D, T, N, L, 4h), weight (D, k*h, 4h), h0/c0 (D, N, L, h), left: zero padding
        before position 0 -> hidden (D, T, N, L, h)."""
        D, T, N, L, G = x.shape
        hid, M, state = G // 4, N * L, state_dtype(x.dtype)
        k = weight.shape[1] // hid
        with torch.autocast(x.device.type, enabled=False):
            weight = weight.to(x.dtype)
            taps = x.new_zeros(T, D, N, L, k, hid)
            activations = x.new_empty((T, D, M, G), dtype=state)
            cells = x.new_empty((T + 1, D, M, hid), dtype=state)
            tanh_cells = x.new_empty((T, D, M, hid), dtype=state)
            ctx.order = sorted(range(4), key=lambda d: -x.stride(d))  # outermost in memory first
            hidden = _new_steps(x, (D, T, N, L, hid), ctx.order)
            cells[0] = c0.reshape(D, M, hid)
            previous = h0
            for t in range(T):
                _gather_taps(taps[t], previous, left)
                buffers = activations[t], cells[t + 1], tanh_cells[t]
                h = _step(x[:, t], taps[t].view(D, M, -1), weight, cells[t], *buffers)
                previous = hidden[:, t]
                previous.copy_(h.view(D, N, L, hid))
        ctx.save_for_backward(weight, taps, activations, cells, tanh_cells)
        ctx.left = left
        return hidden

    @staticmethod
    @_differentiable_once
    def backward(ctx, grad_hidden: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
        weight, taps, activations, cells, tanh_cells = ctx.saved_tensors
        T, D, N, L, k, hid = taps.shape
        M = N * L
        grad_x = _new_steps(taps, (D, T, N, L, 4 * hid), ctx.order)
        grad_weight = torch.zeros_like(weight, dtype=cells.dtype)  # sums in the state dtype
        grad_h, grad_c = cells.new_zeros(2, D, M, hid)  # from the next step
        for t in reversed(range(T)):
            grad_h = grad_hidden[:, t].reshape(D, M, hid) + grad_h.view(D, M, hid)
            saved = (taps[t].view(D, M, -1), weight, cells[t], activations[t], tanh_cells[t])
            grad_gates, grad_taps, grad_c = _step_backward(grad_h, grad_c, saved, grad_weight)
            grad_x[:, t] = grad_gates.view(D, N, L, -1)
            grad_h = _scatter_taps(grad_taps.view(D, N, L, k, hid), ctx.left).to(cells.dtype)
        return grad_x, grad_weight, grad_h, grad_c.view(D, N, L, hid), None


def _new_steps(like: Tensor, shape: tuple[int, ...], order: list[int]) -> Tensor:
    """An empty (D, T, N, L, channels) tensor, dims 0-3 in memory in `order`, channels last."""
    physical = like.new_empty([shape[d] for d in order] + [shape[4]])
    return physical.permute([order.index(d) for d in range(4)] + [4])


def _gather_taps(taps: Tensor, h: Tensor, left: int) -> None:
    """taps[..., l, j, :] = h[..., l + j - left, :], in place: taps (D, N, L, k, h), zero where
    l + j - left is outside 0..L-1 (left untouched), h (D, N, L, h)."""
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
