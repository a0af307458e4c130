"""The convolutional LSTM of the Row LSTM and the Diagonal BiLSTM (section 3.1-3.2): its weights
and initial state (`ConvLSTMScan`), and the cell written once with its adjoint.

A step: input-to-state gates + each position's k neighbouring states ("taps") times the
state-to-state matrix, then the LSTM cell. The scans (`row_wavefront.py`, the Diagonal BiLSTM's
`DiagonalScan`) run whole layers as one autograd node each, calling `cell` and `cell_backward`
on views of preallocated buffers; the cached samplers call it through `CellBuffers`. Under
autocast the products run in bf16, and activations, cell states and the weights' gradient sums
stay in float32 (`state_dtype`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor, nn


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of states and gradient sums for products in `dtype`: float32 or wider."""
    return torch.promote_types(dtype, torch.float32)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the products run in: autocast's where it is on for x's device, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class GateViews(NamedTuple):
    """Views of a (..., 4h) tensor of gates [o, f, i, g]: all four, the three sigmoid gates
    together and the content (tanh) gate, then each gate."""

    gates: Tensor
    sigmoids: Tensor
    content: Tensor
    output: Tensor
    forget: Tensor
    input: Tensor


def gate_views(gates: Tensor, hidden: int) -> GateViews:
    """`GateViews` of gates (..., 4h)."""
    output, forget, input_gate, _ = gates.split(hidden, -1)
    return GateViews(
        gates, gates[..., : 3 * hidden], gates[..., 3 * hidden :], output, forget, input_gate
    )


def cell(pre: Tensor, c_prev: Tensor, activations: Tensor, c: Tensor, tanh_c: Tensor, h: Tensor):
    """The LSTM cell into buffers, for any matching shapes (..., 4h) and (..., h).

    pre: pre-activations [o, f, i, g] (may be `activations` itself), used as scratch: its g
    is doubled in place. Writes activations = [sigmoid(o), sigmoid(f), sigmoid(i), tanh(g)],
    c = f * c_prev + i * g, tanh_c = tanh(c) and h = sigmoid(o) * tanh(c).
    """
    hidden = c.shape[-1]
    cell_into(gate_views(pre, hidden), gate_views(activations, hidden), c_prev, c, tanh_c, h)


def cell_into(pre: GateViews, activations: GateViews, c_prev, c, tanh_c, h) -> None:
    """`cell` on gate views made by the caller (made once for buffers a scan reuses).

    tanh(x) is computed as 2 sigmoid(2x) - 1: one sigmoid over all four gates' contiguous rows
    instead of a sigmoid and a tanh on strided parts of them, and sigmoid's kernel instead of
    tanh's (on CPU, torch's tanh costs about 5x its sigmoid per element; together the cell's
    activations ran about 3x faster, benchmarks/RESULTS.md). Doubling is exact; the result's
    error is absolute, within two units in the last place of 1 (float32: 1.8e-7 measured over
    [-20, 20], torch's tanh 3e-8), so near x = 0 it is not relatively accurate: the cell adds
    it to c and scales h with it, where errors of that size are below the products' rounding.
    """
    pre.content.mul_(2)
    torch.sigmoid(pre.gates, out=activations.gates)
    activations.content.mul_(2).sub_(1)
    torch.mul(activations.forget, c_prev, out=c).addcmul_(activations.input, activations.content)
    torch.mul(c, 2, out=tanh_c).sigmoid_().mul_(2).sub_(1)
    torch.mul(activations.output, tanh_c, out=h)


class CellBuffers:
    """`cell`'s buffers for one position of n images, their views made once (the samplers).

    Attributes:
        pre: (n, 4h) in the products' dtype (a new buffer, or the view given): write the
            pre-activations here, then call.
    """

    def __init__(self, n: int, hidden: int, like: Tensor, pre: Tensor | None = None):
        state = state_dtype(like.dtype)
        self.pre = like.new_empty(n, 4 * hidden) if pre is None else pre
        self.tanh_c = like.new_empty(n, hidden, dtype=state)
        self.pre_views = gate_views(self.pre, hidden)
        self.activations = gate_views(like.new_empty(n, 4 * hidden, dtype=state), hidden)

    def __call__(self, c_prev: Tensor, c: Tensor, h: Tensor) -> None:
        """The cell of `pre` and c_prev (n, h), into c and h (n, h)."""
        cell_into(self.pre_views, self.activations, c_prev, c, self.tanh_c, h)


def cell_backward(
    grad_h: Tensor, grad_c: Tensor, activations: Tensor, c_prev: Tensor, tanh_c: Tensor,
    grad_pre: Tensor,
) -> Tensor:  # fmt: skip
    """The adjoint of `cell`: from dL/dh and dL/dc (from the next step), writes dL/dpre into
    `grad_pre` (..., 4h) and returns the total dL/dc (..., h); dL/dc_prev is that times the
    forget gate (the caller multiplies, into wherever c_prev's gradient lives)."""
    hidden = c_prev.shape[-1]
    grads, acts = gate_views(grad_pre, hidden), gate_views(activations, hidden)
    return cell_backward_from(grads, acts, grad_h, grad_c, c_prev, tanh_c)


def cell_backward_from(
    grad_pre: GateViews, activations: GateViews, grad_h: Tensor, grad_c: Tensor, c_prev: Tensor,
    tanh_c: Tensor,
) -> Tensor:  # fmt: skip
    """`cell_backward` on gate views made by the caller."""
    # dL/dc = dL/dc (next step) + dL/dh * o * (1 - tanh(c)^2)
    grad_cell = _tanh_backward(grad_h * activations.output, tanh_c).add_(grad_c)
    torch.mul(grad_h, tanh_c, out=grad_pre.output)
    torch.mul(grad_cell, c_prev, out=grad_pre.forget)
    torch.mul(grad_cell, activations.content, out=grad_pre.input)
    sigmoids = grad_pre.sigmoids
    _sigmoid_backward(sigmoids, activations.sigmoids, grad_input=sigmoids)
    torch.mul(grad_cell, activations.input, out=grad_pre.content)
    _tanh_backward(grad_pre.content, activations.content, grad_input=grad_pre.content)
    return grad_cell


# dL/dx from dL/dy and y = sigmoid(x) or tanh(x), one kernel each (autograd's own).
_sigmoid_backward = torch.ops.aten.sigmoid_backward
_tanh_backward = torch.ops.aten.tanh_backward


def add_product(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out += a @ b, batched (D, m, n) @ (D, n, p); `out` may be wider than a and b."""
    if out.dtype == a.dtype:
        # out=, not baddbmm_: torch's FLOP counter only sees the out-of-place overloads
        torch.baddbmm(out, a, b, out=out)
    else:
        out += torch.bmm(a, b)


def differentiable_once(backward):
    """A backward that raises as soon as a graph of the gradient is requested (stricter than
    `once_differentiable`, which raises only when a second backward reaches its node: what
    `autograd.grad` with chosen inputs, as in gradgradcheck or gradient penalties, skips)."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the PixelRNN LSTM scan is differentiable once (its backward is hand-written): "
                "double backward through a Row LSTM or Diagonal BiLSTM is not supported"
            )
        return backward(ctx, *grads)

    return wrapper


class ConvLSTMScan(nn.Module):
    """A convolutional LSTM's state-to-state weight and initial state: the parameters a Row LSTM
    or Diagonal BiLSTM layer scans with (the scans themselves run the whole layer, or the whole
    stack of Row LSTM layers, as one autograd node).

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

    def initial_vectors(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(h_0, c_0), each (D, h): the learned vectors, or zeros in `state_dtype(like.dtype)`."""
        if self.initial_hidden is not None:
            return self.initial_hidden, self.initial_cell
        directions = self.state_to_state.shape[0]
        zeros = like.new_zeros(directions, self.hidden, dtype=state_dtype(like.dtype))
        return zeros, zeros
