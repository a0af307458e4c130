"""The one LSTM recurrence shared by the Row LSTM and the Diagonal BiLSTM (section 3.1-3.2).

Both layers precompute their input-to-state term for the whole map, then scan it one step at a
time (rows for the Row LSTM, skewed columns for the Diagonal LSTM). Each step is a single batched
matrix product: the k state-to-state taps of every position are gathered into one (k*h)-wide row,
and all directions of a bidirectional layer share one `baddbmm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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

    def step(
        self, input_gates: Tensor, h: Tensor, c: Tensor, weight: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One scan step.

        Args:
            input_gates: (D, N, L, 4h) input-to-state term of this step.
            h, c: (D, N, L, h) state of the previous step.
            weight: (D, k*h, 4h) from `state_to_state_matrix`.

        Returns:
            (h, c) of this step, each (D, N, L, h).
        """
        D, N, L, _ = h.shape
        padded = F.pad(h, (0, 0, *self.pad))  # (D, N, L+k-1, h)
        taps = padded.unfold(2, self.kernel, 1).reshape(D, N * L, -1)  # (D, N*L, h*k)
        h, c = self.cell(input_gates.reshape(D, N * L, -1), taps, c.reshape(D, N * L, -1), weight)
        return h.view(D, N, L, -1), c.view(D, N, L, -1)

    def forward(self, input_to_state: Tensor) -> Tensor:
        """(D, T, N, L, 4h) -> hidden states (D, T, N, L, h)."""
        _, _, N, L, _ = input_to_state.shape
        weight = self.state_to_state_matrix(input_to_state.dtype)
        h, c = self.initial_state(N, L, input_to_state)
        outputs = []
        # unbind, not input_to_state[:, t]: each select's backward would allocate a zero
        # gradient of the whole map per step; unbind's backward is a single stack.
        for input_gates in input_to_state.unbind(1):
            h, c = self.step(input_gates, h, c, weight)
            outputs.append(h)
        return torch.stack(outputs, dim=1)
