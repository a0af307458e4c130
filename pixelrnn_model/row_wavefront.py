"""A stack of Row LSTM layers run as a wavefront: one autograd node for the whole stack.

Row i of layer l needs row i of layer l-1 (its input) and row i-1 of layer l (its state), so
step t runs every (layer l, row t - l) at once: L + H - 1 steps instead of L * H. Each step is
one batched product per operand over the active layers (the masked 1 x k input-to-state conv of
the layer inputs' row, plus the k-wide state-to-state conv of the rows above), the LSTM cell,
the 1x1 output conv and the residual add. Every buffer is laid out (layer, row, ...), so the
active (layer, row) pairs of a step are one strided view ("anti-diagonal": layer + a, row - a);
taps are strided views too (overlapping windows), copied once per step into the product's input.

The backward runs the steps in reverse with the cell's adjoint, keeping the gates' gradients of
every step; the weights' gradients are then a few large products over all rows.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from pixelrnn_model import workspace
from pixelrnn_model.conv_lstm import (
    GateViews,
    add_product,
    cell_backward_from,
    cell_into,
    compute_dtype,
    differentiable_once,
    gate_views,
    state_dtype,
)


def anti_diagonal(
    buffer: Tensor, layer: int, row: int, m: int, col: int = 0, width: int | None = None,
    taps: int = 0,
) -> Tensor:  # fmt: skip
    """The view of a contiguous (layers, rows, B, columns, ch) buffer at (layer + a, row - a)
    for a < m: (m, B, width, ch), or with `taps` (m, B, width, taps, ch) whose [a, b, w, q] is
    buffer[layer + a, row - a, b, col + w + q]; width None: the full rows merged, (m, B*cols, ch).
    """
    s_layer, s_row, s_batch, s_col, _ = buffer.stride()
    offset = buffer.storage_offset() + layer * s_layer + row * s_row + col * s_col
    batch, channels = buffer.shape[2], buffer.shape[4]
    if width is None:
        size = (m, batch * buffer.shape[3], channels)
        return buffer.as_strided(size, (s_layer - s_row, s_col, 1), offset)
    size, stride = [m, batch, width, channels], [s_layer - s_row, s_batch, s_col, 1]
    if taps:
        size.insert(3, taps)
        stride.insert(3, s_col)
    return buffer.as_strided(size, stride, offset)


class RowWavefront(torch.autograd.Function):
    """`row_lstm_stack`'s computation as one autograd node (see the module docstring).

    Forward inputs: x (B, C2, H, W) the first layer's input; per layer l < L: w_in (L, kx*C2, 4h)
    the masked input-to-state conv's live taps, rows ordered (tap, channel); b_in (L, 4h);
    w_ss (L, k*h, 4h); w_out (L, h, C2) the 1x1 output conv; b_out (L, C2); h0, c0 (L, h) the
    state above row 0; geometry (kx taps of x, x's left padding, x's right padding, state's left
    padding); residual; recorded: whether autograd records this call (else the buffers go back
    to the pool at once); w_read (L, C2, Co), b_read (Co) or both None.

    Returns, without w_read: (B, H, W, L, C2) the residual stream after each layer; with it:
    (B, H, W, Co) the sum over layers of stream l @ w_read[l] + b_read (the network's skip
    connections), read from the stream buffer directly (the L streams never leave the node).

    The large buffers come from `workspace` (call `apply` inside `workspace.saved_to_pool()`).
    """

    @staticmethod
    def forward(
        ctx, x, w_in, b_in, w_ss, w_out, b_out, h0, c0, geometry, residual, recorded,
        w_read=None, b_read=None,
    ):  # fmt: skip
        B, C2, H, W = x.shape
        L, G = b_in.shape
        hid, (kx, x_left, x_right, h_left) = G // 4, geometry
        k = w_ss.shape[1] // hid
        dtype = compute_dtype(x)
        state, M = state_dtype(dtype), B * W
        ctx.dtypes = [t.dtype for t in (x, w_in, b_in, w_ss, w_out, b_out, h0, c0)]
        with torch.autocast(x.device.type, enabled=False):
            # The weights in pooled buffers, so their per-step slices are made once.
            w_in, b_in, w_ss, w_out, b_out = (
                _pooled_copy(t, dtype, x) for t in (w_in, b_in, w_ss, w_out, b_out)
            )
            xs = _padded((L + 1, H, B, W, C2), x_left, x_right, dtype, x)
            xs[0, :, :, x_left : x_left + W] = x.permute(2, 0, 3, 1)
            hs = _padded((L, H + 1, B, W, hid), h_left, k - 1 - h_left, dtype, x)  # row 0: above
            hs[:, 0, :, h_left : h_left + W] = h0[:, None, None].to(dtype)
            cs = workspace.take((L, H + 1, B, W, hid), state, x, small=True)
            cs[:, 0] = c0[:, None, None]
            acts = workspace.take((L, H, B, W, G), state, x, small=True)
            tanh_cs = workspace.take((L, H, B, W, hid), state, x, small=True)
            # Every position's taps, kept for the weights' gradients: (L, H, B, W, taps * ch).
            taps_x = workspace.take((L, H, B, W, kx * C2), dtype, x, small=True)
            taps_h = workspace.take((L, H, B, W, k * hid), dtype, x, small=True)
            pre = workspace.take((L, M, G), dtype, x, small=True)
            h_new = workspace.take((L, M, hid), dtype, x, small=True)
            out = workspace.take((L, M, C2), dtype, x, small=True)
            steps = _Steps(L, H)
            separate = dtype == state  # else the gates are summed in `acts` (the state dtype)
            per_step = zip(
                steps.diagonals(taps_x, shape=(B, W, kx, C2)),
                steps.diagonals(xs, width=W, taps=kx),
                steps.diagonals(taps_h, shape=(B, W, k, hid)),
                steps.diagonals(hs, width=W, taps=k),
                steps.leading(pre),
                steps.diagonals(taps_x),
                steps.layers(w_in),
                steps.layers(b_in, unsqueeze=True),
                steps.diagonals(acts),
                steps.diagonals(taps_h),
                steps.layers(w_ss),
                steps.gates(pre, diagonal=False) if separate else [None] * len(steps),
                steps.gates(acts),
                steps.diagonals(cs),
                steps.diagonals(cs, row=1),
                steps.diagonals(tanh_cs),
                steps.leading(h_new),
                steps.diagonals(hs, row=1, col=h_left, width=W),
                steps.leading(h_new, shape=(B, W, hid)),
                steps.leading(out),
                steps.layers(w_out),
                steps.layers(b_out, unsqueeze=True),
                steps.diagonals(xs, col=x_left, width=W),
                steps.leading(out, shape=(B, W, C2)),
                steps.diagonals(xs, layer=1, col=x_left, width=W),  # layer l's output row
                strict=True,
            )
            for (
                tx5, x_taps, th5, h_taps, p, tx, wi, bi, a, th, wss, pre_gates, act_gates, c_prev,
                c, tanh_c,
                hn, h_row, hn4, o, wo, bo, stream_in, o4, stream,
            ) in per_step:  # fmt: skip
                tx5.copy_(x_taps)
                th5.copy_(h_taps)
                torch.baddbmm(bi, tx, wi, out=p)
                if not separate:  # the state-to-state product is added in the state dtype
                    a.copy_(p)
                    p, pre_gates = a, act_gates
                add_product(p, th, wss)
                cell_into(pre_gates, act_gates, c_prev, c, tanh_c, hn)
                h_row.copy_(hn4)
                torch.baddbmm(bo, hn, wo, out=o)
                if residual:
                    torch.add(stream_in, o4, out=stream)
                else:
                    stream.copy_(o4)
            if w_read is None:
                y = torch.empty((B, H, W, L, C2), dtype=dtype, device=x.device)
                y.copy_(xs[1:, :, :, x_left : x_left + W].permute(2, 1, 3, 0, 4))
            else:
                ctx.read_dtypes = w_read.dtype, b_read.dtype
                w_read, b_read = w_read.to(dtype), b_read.to(dtype)
                y = _read(xs, w_read, b_read, x_left, W)
        workspace.give(b_in, b_out, pre, h_new, out)
        if not recorded:
            workspace.give(xs, hs, cs, acts, tanh_cs, taps_x, taps_h, w_in, w_ss, w_out)
        ctx.save_for_backward(xs, hs, cs, acts, tanh_cs, taps_x, taps_h, w_in, w_ss, w_out, w_read)
        ctx.geometry, ctx.residual = geometry, residual
        ctx.learned = h0.requires_grad, c0.requires_grad
        return y

    @staticmethod
    @differentiable_once
    def backward(ctx, grad_y: Tensor):
        xs, hs, cs, acts, tanh_cs, taps_x, taps_h, w_in, w_ss, w_out, w_read = ctx.saved_tensors
        L, H, B, W, G = acts.shape
        hid, C2, dtype, state = G // 4, xs.shape[-1], xs.dtype, acts.dtype
        kx, x_left, _, h_left = ctx.geometry
        k, M = w_ss.shape[1] // hid, B * W
        gxs = workspace.take(xs.shape, state, xs, small=True)  # dL/d(the residual stream)
        gxs[0].zero_()
        if w_read is None:
            gxs[1:].zero_()
            gxs[1:, :, :, x_left : x_left + W] = grad_y.permute(3, 1, 0, 2, 4)
        else:
            read_grads = _read_backward(grad_y, xs, w_read, gxs, x_left)
        ghs = workspace.take(hs.shape, state, hs, small=True).zero_()
        gcs = workspace.take(cs.shape, state, cs, small=True).zero_()
        g_out = workspace.take((L, M, C2), dtype, xs, small=True)
        g_h = workspace.take((L, M, hid), state, xs, small=True)
        g_taps_x = workspace.take((L, M, kx * C2), dtype, xs, small=True)
        g_taps_h = workspace.take((L, M, k * hid), dtype, xs, small=True)
        grad_gates = workspace.take(acts.shape, state, acts, small=True)  # dL/d(pre-activations)
        steps = _Steps(L, H)
        per_step = zip(
            steps.diagonals(gxs, layer=1, col=x_left, width=W),  # complete: later steps ran
            steps.diagonals(gxs, col=x_left, width=W),
            steps.leading(g_out),
            steps.leading(g_out, shape=(B, W, C2)),
            steps.leading(g_h),
            steps.leading(g_h, shape=(B, W, hid)),
            steps.diagonals(ghs, row=1, col=h_left, width=W),
            steps.layers(w_out, transpose=True),
            steps.gates(grad_gates),
            steps.gates(acts),
            steps.diagonals(cs),
            steps.diagonals(gcs, row=1),
            steps.diagonals(tanh_cs),
            steps.diagonals(gcs),
            steps.diagonals(grad_gates),
            steps.leading(g_taps_x),
            steps.layers(w_in, transpose=True),
            zip(*(steps.diagonals(gxs, col=q, width=W) for q in range(kx)), strict=True),
            zip(*steps.tap_views(g_taps_x, (B, W, kx, C2)), strict=True),
            steps.leading(g_taps_h),
            steps.layers(w_ss, transpose=True),
            zip(*(steps.diagonals(ghs, col=q, width=W) for q in range(k)), strict=True),
            zip(*steps.tap_views(g_taps_h, (B, W, k, hid)), strict=True),
            strict=True,
        )
        for (
            g_stream, g_stream_in, go, go4, gh, gh4, g_h_row, wo_t, grad_gate_views, act_gates,
            c_prev, grad_c, tanh_c,
            grad_c_prev, gp, gtx, wi_t, gx_taps, gtx_taps, gth, wss_t, gh_taps, gth_taps,
        ) in reversed(list(per_step)):  # fmt: skip
            if ctx.residual:
                g_stream_in.add_(g_stream)
            go4.copy_(g_stream)
            gh4.copy_(g_h_row)
            add_product(gh, go, wo_t)
            grad_cell = cell_backward_from(grad_gate_views, act_gates, gh, grad_c, c_prev, tanh_c)
            torch.mul(grad_cell, act_gates.forget, out=grad_c_prev)
            gp = gp.to(dtype)
            torch.bmm(gp, wi_t, out=gtx)
            for target, tap in zip(gx_taps, gtx_taps, strict=True):
                target.add_(tap)
            torch.bmm(gp, wss_t, out=gth)
            for target, tap in zip(gh_taps, gth_taps, strict=True):
                target.add_(tap)
        gate_sums = grad_gates.view(L, H * M, G)  # the weights' sums run in the state dtype
        grad_stream = _gathered(gxs[1:, :, :, x_left : x_left + W], state)  # (L, H, B, W, C2)

        def tap_products(taps: Tensor) -> Tensor:
            """Every position's taps (L, H, B, W, taps*ch) times the gates' gradient, summed over
            positions: (L, taps*ch, 4h)."""
            return taps.view(L, H * M, -1).to(state).transpose(1, 2) @ gate_sums

        states = _gathered(hs[:, 1:, :, h_left : h_left + W], state)
        grads = (
            gxs[0, :, :, x_left : x_left + W].permute(1, 3, 0, 2).clone(),  # (B, C2, H, W)
            tap_products(taps_x),
            gate_sums.sum(1),
            tap_products(taps_h),
            states.view(L, H * M, hid).transpose(1, 2) @ grad_stream.view(L, H * M, C2),
            grad_stream.view(L, H * M, C2).sum(1),
            ghs[:, 0, :, h_left : h_left + W].sum((1, 2)) if ctx.learned[0] else None,
            gcs[:, 0].sum((1, 2)) if ctx.learned[1] else None,
        )
        workspace.give(gxs, ghs, gcs, grad_gates, grad_stream, states, g_out, g_h)
        workspace.give(g_taps_x, g_taps_h)
        cast = [None if g is None else g.to(t) for g, t in zip(grads, ctx.dtypes, strict=True)]
        if w_read is None:
            return *cast, None, None, None, None, None
        read = [g.to(t) for g, t in zip(read_grads, ctx.read_dtypes, strict=True)]
        return *cast, None, None, None, *read


class _Steps:
    """Per-step views of the wavefront's pooled buffers for L layers and H rows, made once per
    buffer and kept with it (`workspace.views`): lists over the steps (l0, m, i0) of `_steps`."""

    def __init__(self, layers: int, rows: int):
        self.shape = layers, rows
        self.steps = _step_list(layers, rows)

    def __len__(self) -> int:
        return len(self.steps)

    def _kept(self, buffer: Tensor, key: tuple, make) -> list:
        """[make(view of buffer, l0, m, i0) for each step], kept with the buffer under key."""
        return workspace.views(
            buffer, (self.shape, *key), lambda base: [make(base, *step) for step in self.steps]
        )

    def diagonals(
        self, buffer: Tensor, layer: int = 0, row: int = 0, col: int = 0,
        width: int | None = None, taps: int = 0, shape: tuple[int, ...] | None = None,
    ) -> list[Tensor]:  # fmt: skip
        """`anti_diagonal(buffer, l0 + layer, i0 + row, m, col, width, taps)` per step, each
        viewed as (m, *shape) when `shape` is given."""

        def make(base, l0, m, i0):
            view = anti_diagonal(base, l0 + layer, i0 + row, m, col, width, taps)
            return view if shape is None else view.view(m, *shape)

        return self._kept(buffer, ("diagonal", layer, row, col, width, taps, shape), make)

    def leading(self, buffer: Tensor, shape: tuple[int, ...] | None = None) -> list[Tensor]:
        """buffer[:m] per step (the active layers' rows of an (L, ...) buffer), each viewed as
        (m, *shape) when `shape` is given."""

        def make(base, l0, m, i0):
            return base[:m] if shape is None else base[:m].view(m, *shape)

        return self._kept(buffer, ("leading", shape), make)

    def layers(self, buffer: Tensor, unsqueeze: bool = False, transpose: bool = False):
        """The active layers' weights per step: buffer[l0 : l0 + m], with a unit dimension
        after the first (a bias) or its last two dimensions swapped."""

        def make(base, l0, m, i0):
            view = base[l0 : l0 + m]
            return view[:, None] if unsqueeze else view.transpose(1, 2) if transpose else view

        return self._kept(buffer, ("layers", unsqueeze, transpose), make)

    def tap_views(self, buffer: Tensor, shape: tuple[int, ...]) -> list[list[Tensor]]:
        """For each tap q: buffer[:m] viewed as (m, *shape) (taps second last), [..., q, :]."""

        def make(base, l0, m, i0):
            view = base[:m].view(m, *shape)
            return [view[..., q, :] for q in range(shape[-2])]

        return list(zip(*self._kept(buffer, ("taps", shape), make), strict=True))

    def gates(self, buffer: Tensor, diagonal: bool = True) -> list[GateViews]:
        """`GateViews` per step of an (L, H, B, W, 4h) buffer's anti-diagonal, or (`diagonal`
        False) of an (L, M, 4h) buffer's first m rows."""
        hidden = buffer.shape[-1] // 4

        def make(base, l0, m, i0):
            view = anti_diagonal(base, l0, i0, m) if diagonal else base[:m]
            return gate_views(view, hidden)

        return self._kept(buffer, ("gates", diagonal), make)


def _read(xs: Tensor, w_read: Tensor, b_read: Tensor, left: int, width: int) -> Tensor:
    """sum_l xs[l + 1] @ w_read[l] + b_read at the image's columns: (B, H, W, Co).

    xs (L+1, H, B, Wp, C2) with zero pad columns in layers 1..L; the products run over every
    column (the pads' rows are dropped at the end): L products of (H*B*Wp, C2) @ (C2, Co)."""
    L, Co = w_read.shape[0], w_read.shape[2]
    _, H, B, padded, C2 = xs.shape
    flat = xs.view(L + 1, H * B * padded, C2)
    total = workspace.take((H, B, padded, Co), xs.dtype, xs)
    out = total.view(-1, Co)
    torch.addmm(b_read, flat[1], w_read[0], out=out)
    for layer in range(1, L):
        out.addmm_(flat[layer + 1], w_read[layer])
    y = torch.empty((B, H, width, Co), dtype=xs.dtype, device=xs.device)
    y.copy_(total[:, :, left : left + width].permute(1, 0, 2, 3))
    workspace.give(total)
    return y


def _read_backward(grad_y: Tensor, xs: Tensor, w_read: Tensor, gxs: Tensor, left: int):
    """`_read`'s adjoint: writes dL/d(stream l) = grad @ w_read[l]^T into gxs[1:] (every
    column: zero at the pads) and returns the gradients of w_read (L, C2, Co) and b_read (Co),
    summed in gxs's dtype."""
    L, Co = w_read.shape[0], w_read.shape[2]
    _, H, B, padded, C2 = xs.shape
    width, state = grad_y.shape[2], gxs.dtype
    grad = workspace.take((H, B, padded, Co), state, xs)
    grad[:, :, :left] = 0
    grad[:, :, left + width :] = 0
    grad[:, :, left : left + width] = grad_y.permute(1, 0, 2, 3)
    flat_grad, flat_xs = grad.view(-1, Co), xs.view(L + 1, -1, C2)
    flat_gxs = gxs.view(L + 1, -1, C2)
    w_read_t = w_read.to(state).transpose(1, 2)
    grad_w = torch.empty((L, C2, Co), dtype=state, device=xs.device)
    for layer in range(L):
        torch.mm(flat_grad, w_read_t[layer], out=flat_gxs[layer + 1])
        torch.mm(flat_xs[layer + 1].t().to(state), flat_grad, out=grad_w[layer])
    grad_b = flat_grad.sum(0)
    workspace.give(grad)
    return grad_w, grad_b


def _padded(shape, left: int, right: int, dtype: torch.dtype, like: Tensor) -> Tensor:
    """A pooled (..., W + left + right, ch) buffer for `shape` (..., W, ch), its `left` and
    `right` columns zero (the rest is written by the caller)."""
    *outer, width, channels = shape
    buffer = workspace.take((*outer, width + left + right, channels), dtype, like, small=True)
    buffer[..., :left, :] = 0
    buffer[..., left + width :, :] = 0
    return buffer


def _gathered(view: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous pooled copy of `view` in `dtype` (give it back when done)."""
    copy = workspace.take(tuple(view.shape), dtype, view)
    copy.copy_(view)
    return copy


def _pooled_copy(tensor: Tensor, dtype: torch.dtype, like: Tensor) -> Tensor:
    """A pooled copy of `tensor` in `dtype` (give it back when done)."""
    copy = workspace.take(tuple(tensor.shape), dtype, like, small=True)
    copy.copy_(tensor)
    return copy


@functools.cache
def _step_list(layers: int, rows: int) -> tuple[tuple[int, int, int], ...]:
    return tuple(_steps(layers, rows))


def _steps(layers: int, rows: int):
    """The wavefront's steps t: (first active layer l0, active layers m, l0's row t - l0)."""
    for t in range(layers + rows - 1):
        first, last = max(0, t - rows + 1), min(layers - 1, t)
        yield first, last - first + 1, t - first
