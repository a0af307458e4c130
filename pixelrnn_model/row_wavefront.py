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

import torch
from torch import Tensor

from pixelrnn_model import workspace
from pixelrnn_model.conv_lstm import (
    add_product,
    cell,
    cell_backward,
    compute_dtype,
    differentiable_once,
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
            w_in, b_in, w_ss, w_out, b_out = (t.to(dtype) for t in (w_in, b_in, w_ss, w_out, b_out))
            xs = _padded((L + 1, H, B, W, C2), x_left, x_right, dtype, x)
            xs[0, :, :, x_left : x_left + W] = x.permute(2, 0, 3, 1)
            hs = _padded((L, H + 1, B, W, hid), h_left, k - 1 - h_left, dtype, x)  # row 0: above
            hs[:, 0, :, h_left : h_left + W] = h0[:, None, None].to(dtype)
            cs = workspace.take((L, H + 1, B, W, hid), state, x)
            cs[:, 0] = c0[:, None, None]
            acts = workspace.take((L, H, B, W, G), state, x)
            tanh_cs = workspace.take((L, H, B, W, hid), state, x)
            # Every position's taps, kept for the weights' gradients: (L, H, B, W, taps * ch).
            taps_x = workspace.take((L, H, B, W, kx * C2), dtype, x)
            taps_h = workspace.take((L, H, B, W, k * hid), dtype, x)
            pre, h_new = x.new_empty((L, M, G), dtype=dtype), x.new_empty((L, M, hid), dtype=dtype)
            out = x.new_empty((L, M, C2), dtype=dtype)
            for l0, m, i0 in _steps(L, H):
                layers = slice(l0, l0 + m)
                p, hn, o = pre[:m], h_new[:m], out[:m]
                tx, th = anti_diagonal(taps_x, l0, i0, m), anti_diagonal(taps_h, l0, i0, m)
                tx.view(m, B, W, kx, C2).copy_(anti_diagonal(xs, l0, i0, m, 0, W, kx))
                th.view(m, B, W, k, hid).copy_(anti_diagonal(hs, l0, i0, m, 0, W, k))
                torch.baddbmm(b_in[layers, None], tx, w_in[layers], out=p)
                a = anti_diagonal(acts, l0, i0, m)  # (m, M, 4h)
                if dtype != state:  # the state-to-state product is added in the state dtype
                    a.copy_(p)
                    p = a
                add_product(p, th, w_ss[layers])
                c_prev, c = anti_diagonal(cs, l0, i0, m), anti_diagonal(cs, l0, i0 + 1, m)
                cell(p, c_prev, a, c, anti_diagonal(tanh_cs, l0, i0, m), hn)
                anti_diagonal(hs, l0, i0 + 1, m, h_left, W).copy_(hn.view(m, B, W, hid))
                torch.baddbmm(b_out[layers, None], hn, w_out[layers], out=o)
                stream = anti_diagonal(xs, l0 + 1, i0, m, x_left, W)  # layer l's output row
                if residual:
                    torch.add(
                        anti_diagonal(xs, l0, i0, m, x_left, W), o.view_as(stream), out=stream
                    )
                else:
                    stream.copy_(o.view_as(stream))
            if w_read is None:
                y = torch.empty((B, H, W, L, C2), dtype=dtype, device=x.device)
                y.copy_(xs[1:, :, :, x_left : x_left + W].permute(2, 1, 3, 0, 4))
            else:
                ctx.read_dtypes = w_read.dtype, b_read.dtype
                w_read, b_read = w_read.to(dtype), b_read.to(dtype)
                y = _read(xs, w_read, b_read, x_left, W)
        if not recorded:
            workspace.give(xs, hs, cs, acts, tanh_cs, taps_x, taps_h)
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
        gxs = workspace.take(xs.shape, state, xs)  # dL/d(the residual stream)
        gxs[0].zero_()
        if w_read is None:
            gxs[1:].zero_()
            gxs[1:, :, :, x_left : x_left + W] = grad_y.permute(3, 1, 0, 2, 4)
        else:
            read_grads = _read_backward(grad_y, xs, w_read, gxs, x_left)
        ghs = workspace.take(hs.shape, state, hs).zero_()
        gcs = workspace.take(cs.shape, state, cs).zero_()
        g_out, g_h = xs.new_empty((L, M, C2)), cs.new_empty((L, M, hid))
        grad_gates = workspace.take(acts.shape, state, acts)  # dL/d(pre-activations)
        w_in_t, w_ss_t, w_out_t = (w.transpose(1, 2) for w in (w_in, w_ss, w_out))
        for l0, m, i0 in reversed(list(_steps(L, H))):
            layers = slice(l0, l0 + m)
            g_stream = anti_diagonal(gxs, l0 + 1, i0, m, x_left, W)  # complete: later steps ran
            if ctx.residual:
                anti_diagonal(gxs, l0, i0, m, x_left, W).add_(g_stream)
            go, gh, gp = g_out[:m], g_h[:m], anti_diagonal(grad_gates, l0, i0, m)
            go.view(m, B, W, C2).copy_(g_stream)
            gh.view(m, B, W, hid).copy_(anti_diagonal(ghs, l0, i0 + 1, m, h_left, W))
            add_product(gh, go, w_out_t[layers])
            a = anti_diagonal(acts, l0, i0, m)
            c_prev, grad_c = anti_diagonal(cs, l0, i0, m), anti_diagonal(gcs, l0, i0 + 1, m)
            grad_cell = cell_backward(gh, grad_c, a, c_prev, anti_diagonal(tanh_cs, l0, i0, m), gp)
            torch.mul(grad_cell, a[..., hid : 2 * hid], out=anti_diagonal(gcs, l0, i0, m))
            gp = gp.to(dtype)
            grad_taps = torch.bmm(gp, w_in_t[layers]).view(m, B, W, kx, C2)
            for q in range(kx):
                anti_diagonal(gxs, l0, i0, m, q, W).add_(grad_taps[..., q, :])
            grad_taps = torch.bmm(gp, w_ss_t[layers]).view(m, B, W, k, hid)
            for q in range(k):
                anti_diagonal(ghs, l0, i0, m, q, W).add_(grad_taps[..., q, :])
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
        workspace.give(gxs, ghs, gcs, grad_gates, grad_stream, states)
        cast = [None if g is None else g.to(t) for g, t in zip(grads, ctx.dtypes, strict=True)]
        if w_read is None:
            return *cast, None, None, None, None, None
        read = [g.to(t) for g, t in zip(read_grads, ctx.read_dtypes, strict=True)]
        return *cast, None, None, None, *read


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
    buffer = workspace.take((*outer, width + left + right, channels), dtype, like)
    buffer[..., :left, :] = 0
    buffer[..., left + width :, :] = 0
    return buffer


def _gathered(view: Tensor, dtype: torch.dtype) -> Tensor:
    """A contiguous pooled copy of `view` in `dtype` (give it back when done)."""
    copy = workspace.take(tuple(view.shape), dtype, view)
    copy.copy_(view)
    return copy


def _steps(layers: int, rows: int):
    """The wavefront's steps t: (first active layer l0, active layers m, l0's row t - l0)."""
    for t in range(layers + rows - 1):
        first, last = max(0, t - rows + 1), min(layers - 1, t)
        yield first, last - first + 1, t - first
