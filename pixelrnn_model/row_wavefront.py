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
    padding); residual. Returns (L, B, H, W, C2): the residual stream after each layer.
    """

    @staticmethod
    def forward(ctx, x, w_in, b_in, w_ss, w_out, b_out, h0, c0, geometry, residual):
        B, C2, H, W = x.shape
        L, G = b_in.shape
        hid, (kx, x_left, x_right, h_left) = G // 4, geometry
        k = w_ss.shape[1] // hid
        dtype = compute_dtype(x)
        state, M = state_dtype(dtype), B * W
        ctx.dtypes = [t.dtype for t in (x, w_in, b_in, w_ss, w_out, b_out, h0, c0)]
        with torch.autocast(x.device.type, enabled=False):
            w_in, b_in, w_ss, w_out, b_out = (t.to(dtype) for t in (w_in, b_in, w_ss, w_out, b_out))
            xs = x.new_zeros((L + 1, H, B, W + x_left + x_right, C2), dtype=dtype)
            xs[0, :, :, x_left : x_left + W] = x.permute(2, 0, 3, 1)
            hs = x.new_zeros((L, H + 1, B, W + k - 1, hid), dtype=dtype)  # row 0: above row 0
            hs[:, 0, :, h_left : h_left + W] = h0[:, None, None].to(dtype)
            cs = x.new_empty((L, H + 1, B, W, hid), dtype=state)
            cs[:, 0] = c0[:, None, None]
            acts = x.new_empty((L, H, B, W, G), dtype=state)
            tanh_cs = x.new_empty((L, H, B, W, hid), dtype=state)
            taps_x = x.new_empty((L, M, kx * C2), dtype=dtype)
            taps_h = x.new_empty((L, M, k * hid), dtype=dtype)
            pre, h_new = x.new_empty((L, M, G), dtype=dtype), x.new_empty((L, M, hid), dtype=dtype)
            out = x.new_empty((L, M, C2), dtype=dtype)
            for l0, m, i0 in _steps(L, H):
                layers = slice(l0, l0 + m)
                tx, th, p, hn, o = taps_x[:m], taps_h[:m], pre[:m], h_new[:m], out[:m]
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
            y = xs[1:, :, :, x_left : x_left + W].permute(0, 2, 1, 3, 4).contiguous()
        ctx.save_for_backward(xs, hs, cs, acts, tanh_cs, w_in, w_ss, w_out)
        ctx.geometry, ctx.residual = geometry, residual
        ctx.learned = h0.requires_grad, c0.requires_grad
        return y

    @staticmethod
    @differentiable_once
    def backward(ctx, grad_y: Tensor):
        xs, hs, cs, acts, tanh_cs, w_in, w_ss, w_out = ctx.saved_tensors
        L, H, B, W, G = acts.shape
        hid, C2, dtype, state = G // 4, xs.shape[-1], xs.dtype, acts.dtype
        kx, x_left, _, h_left = ctx.geometry
        k, M = w_ss.shape[1] // hid, B * W
        gxs = torch.zeros_like(xs, dtype=state)  # dL/d(the residual stream)
        gxs[1:, :, :, x_left : x_left + W] = grad_y.permute(0, 2, 1, 3, 4)
        ghs, gcs = torch.zeros_like(hs, dtype=state), torch.zeros_like(cs)
        g_out, g_h = xs.new_empty((L, M, C2)), cs.new_empty((L, M, hid))
        grad_gates = torch.empty_like(acts)  # (L, H, B, W, 4h) dL/d(pre-activations)
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
        grad_gates = grad_gates.view(L, H * M, G)  # the weights' sums run in the state dtype
        grad_stream = gxs[1:, :, :, x_left : x_left + W].reshape(L, H * M, C2)

        def tap_products(buffer: Tensor, rows: slice, taps: int) -> Tensor:
            """Each tap's input times the gates' gradient, summed over positions:
            (L, taps*ch, 4h)."""
            per_tap = [
                buffer[:, rows, :, q : q + W].reshape(L, H * M, -1).to(state).transpose(1, 2)
                @ grad_gates
                for q in range(taps)
            ]
            return torch.cat(per_tap, 1)

        grads = (
            gxs[0, :, :, x_left : x_left + W].permute(1, 3, 0, 2),  # (B, C2, H, W)
            tap_products(xs[:L], slice(0, H), kx),
            grad_gates.sum(1),
            tap_products(hs, slice(0, H), k),
            hs[:, 1:, :, h_left : h_left + W].reshape(L, H * M, hid).to(state).transpose(1, 2)
            @ grad_stream,
            grad_stream.sum(1),
            ghs[:, 0, :, h_left : h_left + W].sum((1, 2)) if ctx.learned[0] else None,
            gcs[:, 0].sum((1, 2)) if ctx.learned[1] else None,
        )
        cast = [None if g is None else g.to(t) for g, t in zip(grads, ctx.dtypes, strict=True)]
        return *cast, None, None


def _steps(layers: int, rows: int):
    """The wavefront's steps t: (first active layer l0, active layers m, l0's row t - l0)."""
    for t in range(layers + rows - 1):
        first, last = max(0, t - rows + 1), min(layers - 1, t)
        yield first, last - first + 1, t - first
