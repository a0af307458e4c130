"""Diagonal BiLSTM layer (van den Oord et al. 2016, section 3.2).

Position (r, j) on diagonal s = r + j reads the states of (r-1, j) and (r, j-1): the skewed
map's 2-tap state-to-state conv over (r-1, s-1) and (r, s-1). The skewed map itself is never
built: states live in diagonal-major "slots", each diagonal's positions (by row) followed by one
pad slot holding the initial state, which the zero-padded skewed map holds outside the image.
Then a diagonal's two taps are two contiguous runs of the previous diagonal's slots, and each
step (both directions at once) is two products and the cell on slices of preallocated buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

from pixelrnn_model import workspace
from pixelrnn_model.conv_lstm import (
    CellBuffers,
    ConvLSTMScan,
    GateViews,
    add_product,
    cell_backward_from,
    cell_into,
    compute_dtype,
    differentiable_once,
    gate_views,
    state_dtype,
)
from pixelrnn_model.masked_conv import MaskedConv2d


@dataclass(frozen=True)
class DiagonalSlots:
    """Where each position's state lives in the diagonal-major slot layout of an H x W image.

    Slots: 0 and 1 are pads; diagonal s (rows lo..hi) takes n = hi - lo + 1 slots from
    `steps[s][1]`, then one pad. Pads hold the initial state; slot `slots` (the last) holds zeros.

    Attributes:
        slots: P, the number of slots before the zero slot.
        steps: per diagonal s: (n, first slot, first slot of the up taps (r-1, j), first slot
            of the left taps (r, j-1)); each run is n contiguous slots.
        slot_of: int64 (2, H*W): for each raster position r*W + j, its slot left to right, and
            right to left (the mirrored image's diagonals: the slot of (r, W-1-j)).
        above_right: int64 (H*W,): the right-to-left slot of (r-1, j); row 0: the zero slot.
        taps: int64 (2, P): for every slot, the slot of its up tap (r-1, j) and of its left tap
            (r, j-1); a pad's taps: the zero slot.
        pads: int64: the pad slots.
    """

    slots: int
    steps: tuple[tuple[int, int, int, int], ...]
    slot_of: Tensor
    above_right: Tensor
    taps: Tensor
    pads: Tensor


@lru_cache(maxsize=64)
def diagonal_slots(height: int, width: int, device: torch.device) -> DiagonalSlots:
    """The slot layout of an H x W image (cached: every layer of every pass uses it)."""
    steps, slot_of, up, left = [], [0] * (height * width), {}, {}
    offset, previous_lo, previous_n = 1, 0, 0  # diagonal -1: empty, its pad at slot 1
    pads = [0, 1]
    for s in range(height + width - 1):
        lo, hi = max(0, s - width + 1), min(s, height - 1)
        n, start = hi - lo + 1, offset + previous_n + 1
        up_start, left_start = offset + lo - 1 - previous_lo, offset + lo - previous_lo
        steps.append((n, start, up_start, left_start))
        for r in range(lo, hi + 1):
            slot_of[r * width + s - r] = start + r - lo
        up.update((start + a, up_start + a) for a in range(n))
        left.update((start + a, left_start + a) for a in range(n))
        pads.append(start + n)
        offset, previous_lo, previous_n = start, lo, n
    slots = pads[-1] + 1
    left_to_right = torch.tensor(slot_of)
    mirrored = left_to_right.view(height, width).flip(1).reshape(-1)
    above_right = torch.cat([torch.full((width,), slots), mirrored[:-width]])
    taps = [[tap.get(slot, slots) for slot in range(slots)] for tap in (up, left)]

    def to(values) -> Tensor:
        return torch.as_tensor(values, dtype=torch.int64).to(device)

    return DiagonalSlots(
        slots, tuple(steps), to(torch.stack([left_to_right, mirrored])), to(above_right),
        to(taps), to(pads),
    )  # fmt: skip


@lru_cache(maxsize=64)
def batch_rows(height: int, width: int, batch: int, device: torch.device) -> Tensor:
    """int64 (3, B*H*W): for image b's position p (row b*H*W + p of a (B, H*W, ch) map), its
    row s*B + b of a (slots, B, ch) buffer, with s `slot_of[0]`, `slot_of[1]` or `above_right`
    of `diagonal_slots`: gathers and scatters between the two layouts as one indexed op each."""
    geo = diagonal_slots(height, width, device)
    slots = torch.cat([geo.slot_of, geo.above_right[None]])  # (3, H*W)
    images = torch.arange(batch, device=device)[:, None]
    return (slots[:, None, :] * batch + images).reshape(3, -1)


class DiagonalScan(torch.autograd.Function):
    """A Diagonal BiLSTM layer's input-to-state product and both directions' scans as one
    autograd node.

    Forward: rows (B, H*W, 2h) the layer input in raster order (any strides: a view of the
    channels-last map); w_in (8h, 2h), b_in (8h) the masked 1x1 input-to-state conv, gates
    [o, f, i, g] left to right then right to left; weight (2, 2h, 4h) state-to-state, rows
    (tap, channel) with taps (r-1, j), (r, j-1); h0, c0 (2, h); the image's height and width;
    recorded: whether autograd records this call (else the buffers go back to the pool at once).
    Returns (B, H*W, h), contiguous (channels-last as (B, h, H, W)): the left-to-right state at
    (r, j) plus the right-to-left state at (r-1, j) (zero on row 0).

    The input is gathered into the slot layout once (`operands`, (2, slots, B, 2h + 2h + 1):
    each slot's two tap states, its input, a one); the input product writes the gates there
    directly, and the backward's one product of `operands` with the gates' gradients gives the
    gradients of weight, w_in and b_in together.

    The large buffers come from `workspace` (call `apply` inside `workspace.saved_to_pool()`).
    """

    @staticmethod
    def forward(ctx, rows, w_in, b_in, weight, h0, c0, height, width, recorded):
        B, C2, hid = rows.shape[0], rows.shape[2], weight.shape[1] // 2
        G, D, dtype = 4 * hid, 2, compute_dtype(rows)
        state, geo = state_dtype(dtype), diagonal_slots(height, width, rows.device)
        P, K = geo.slots, 2 * hid + C2 + 1
        ctx.dtypes = [t.dtype for t in (rows, w_in, b_in, weight, h0, c0)]
        with torch.autocast(rows.device.type, enabled=False):
            weight = weight.to(dtype)
            w_in = w_in.to(dtype).view(D, G, C2).transpose(1, 2)  # (D, 2h, 4h)
            operands = workspace.take((D, P, B, K), state, rows, small=True)
            inputs = operands[..., 2 * hid : 2 * hid + C2]  # (D, P, B, 2h)
            index = batch_rows(height, width, B, rows.device)
            flat_rows = rows.reshape(-1, C2).to(state)  # (B*H*W, 2h)
            for d in range(D):
                inputs[d].view(P * B, C2).index_copy_(0, index[d], flat_rows)
            inputs.index_fill_(1, geo.pads, 0)
            operands[..., -1] = 1
            acts = workspace.take((D, P, B, G), state, rows, small=True)
            flat_acts, flat_inputs = acts.view(D, P * B, G), inputs.view(D, P * B, C2)
            bias = b_in.to(state).view(D, 1, G)
            if dtype == state:
                torch.baddbmm(bias, flat_inputs, w_in, out=flat_acts)
            else:  # the product in the compute dtype, summed into the state dtype
                torch.add(bias, torch.bmm(flat_inputs.to(dtype), w_in), out=flat_acts)
            # Slot x holds [h(x), h(x+1)]: a position's up and left taps are the pair of its up
            # tap's slot, so each step's state-to-state product is one product (rows: pairs).
            pairs = workspace.take((D, P + 1, B, 2 * hid), dtype, rows, small=True)
            pairs[:, :P] = h0.repeat(1, 2)[:, None, None]
            pairs[:, P - 1, :, hid:] = 0  # slot P: the zero slot
            pairs[:, P] = 0
            cs = workspace.take((D, P, B, hid), state, rows, small=True)
            cs[:] = c0[:, None, None]
            tanh_cs = workspace.take((D, P, B, hid), state, rows, small=True)
            steps = _DiagonalSteps(height, width)
            per_step = zip(
                steps.runs(acts, "out"),
                steps.gates(acts),
                steps.runs(pairs, "up"),
                steps.runs(cs, "left"),
                steps.runs(cs, "out"),
                steps.runs(tanh_cs, "out"),
                steps.runs(pairs, "out", channels=(0, hid)),
                steps.runs(pairs, "out", shift=-1, channels=(hid, 2 * hid)),
                strict=True,
            )
            for a, a_gates, taps, c_prev, c, tanh_c, h, h_again in per_step:
                add_product(a, taps, weight)  # a: (D, n*B, 4h), taps: (D, n*B, 2h)
                cell_into(a_gates, a_gates, c_prev, c, tanh_c, h)
                h_again.copy_(h)  # as the second of its left neighbour's pair
            flat_hs = pairs.view(D, -1, 2 * hid)[..., :hid]
            combined = flat_hs[0].index_select(0, index[0])  # (B*H*W, h)
            combined += flat_hs[1].index_select(0, index[2])
        if not recorded:
            workspace.give(pairs, cs, acts, tanh_cs, operands)
        ctx.save_for_backward(pairs, cs, acts, tanh_cs, operands, weight, w_in)
        ctx.geo, ctx.size = geo, (height, width)
        ctx.learned = h0.requires_grad, c0.requires_grad
        return combined.view(B, height * width, hid)

    @staticmethod
    @differentiable_once
    def backward(ctx, grad_out: Tensor):
        pairs, cs, acts, tanh_cs, operands, weight, w_in = ctx.saved_tensors
        (D, P, B, G), dtype, state = acts.shape, pairs.dtype, acts.dtype
        geo, hid, C2 = ctx.geo, G // 4, w_in.shape[1]
        ghs = workspace.take((D, P + 1, B, hid), state, acts, small=True).zero_()
        index = batch_rows(*ctx.size, B, acts.device)
        grad_out = grad_out.reshape(-1, hid).to(state)  # (B*H*W, h)
        flat_ghs = ghs.view(D, -1, hid)
        flat_ghs[0].index_copy_(0, index[0], grad_out)
        flat_ghs[1].index_add_(0, index[2], grad_out)
        gcs = workspace.take(cs.shape, state, cs, small=True).zero_()
        # Every in-image slot's gradient is written by its step: only the pads need zeros.
        grad_gates = workspace.take(acts.shape, state, acts, small=True).index_fill_(1, geo.pads, 0)
        weight_t = weight.transpose(1, 2)  # (D, 4h, 2h)
        steps = _DiagonalSteps(*ctx.size)
        longest = max(n for n, *_ in steps.steps)
        grad_taps = workspace.take((D, longest * B, 2 * hid), dtype, acts, small=True)
        per_step = zip(
            steps.gates(grad_gates),
            steps.runs(grad_gates, "out"),
            steps.gates(acts),
            steps.runs(ghs, "out"),
            steps.runs(gcs, "out"),
            steps.runs(cs, "left"),
            steps.runs(tanh_cs, "out"),
            steps.runs(gcs, "left"),
            steps.runs(ghs, "up"),
            steps.runs(ghs, "left"),
            steps.leading(grad_taps, B),
            steps.leading(grad_taps, B, channels=(0, hid)),
            steps.leading(grad_taps, B, channels=(hid, 2 * hid)),
            strict=True,
        )
        for (
            gp_gates,
            gp,
            a_gates,
            grad_h,
            grad_c,
            c_prev,
            tanh_c,
            grad_c_prev,
            g_up,
            g_left,
            g_taps,
            g_taps_up,
            g_taps_left,
        ) in reversed(list(per_step)):
            grad_cell = cell_backward_from(gp_gates, a_gates, grad_h, grad_c, c_prev, tanh_c)
            grad_c_prev.addcmul_(grad_cell, a_gates.forget)
            torch.bmm(gp.to(dtype), weight_t, out=g_taps)
            g_up.add_(g_taps_up)
            g_left.add_(g_taps_left)
        # Every slot's taps (a pair) beside its input; a pad's: the zero slot's.
        for d in range(D):  # along the leading dimension: a copy of whole (B, 2h) blocks
            operands[d, ..., : 2 * hid] = pairs[d].index_select(0, geo.taps[0])
        flat_grads = grad_gates.view(D, P * B, G)
        sums = operands.view(D, P * B, -1).transpose(1, 2) @ flat_grads  # (D, K, 4h)
        grad_inputs = workspace.take((D, P, B, C2), state, acts)
        torch.bmm(flat_grads, w_in.to(state).transpose(1, 2), out=grad_inputs.view(D, P * B, C2))
        flat_inputs = grad_inputs.view(D, P * B, C2)
        grad_rows = flat_inputs[0].index_select(0, index[0])  # (B*H*W, 2h)
        grad_rows += flat_inputs[1].index_select(0, index[1])
        grad_w_in = sums[:, 2 * hid : 2 * hid + C2].transpose(1, 2).reshape(D * G, C2)
        grad_h0 = ghs.index_select(1, geo.pads).sum((1, 2)) if ctx.learned[0] else None
        grad_c0 = gcs.index_select(1, geo.pads).sum((1, 2)) if ctx.learned[1] else None
        workspace.give(ghs, gcs, grad_gates, grad_inputs, grad_taps)
        grads = (
            grad_rows.view(B, -1, C2),
            grad_w_in,
            sums[:, -1].reshape(D * G),
            sums[:, : 2 * hid],
            grad_h0,
            grad_c0,
        )
        cast = [None if g is None else g.to(t) for g, t in zip(grads, ctx.dtypes, strict=True)]
        return *cast, None, None, None


def _run(buffer: Tensor, start: int, n: int) -> Tensor:
    """Slots start..start+n-1 of a contiguous (D, slots, B, ch) buffer as a (D, n*B, ch) view."""
    D, _, B, channels = buffer.shape
    offset = buffer.storage_offset() + start * B * channels
    return buffer.as_strided((D, n * B, channels), (buffer.stride(0), channels, 1), offset)


def _channels(view: Tensor, channels: tuple[int, int] | None) -> Tensor:
    return view if channels is None else view[..., channels[0] : channels[1]]


class _DiagonalSteps:
    """Per-diagonal views of `DiagonalScan`'s pooled buffers for an H x W image, made once per
    buffer and kept with it (`workspace.views`): lists over the diagonals of `DiagonalSlots`."""

    def __init__(self, height: int, width: int):
        self.size = height, width
        self.steps = diagonal_slots(height, width, torch.device("cpu")).steps

    def runs(
        self, buffer: Tensor, which: str, shift: int = 0, channels: tuple[int, int] | None = None
    ) -> list[Tensor]:
        """`_run(buffer, start + shift, n)` per diagonal, start its "out", "up" or "left" slot;
        of the channels lo:hi only when `channels` is (lo, hi)."""
        column = ("out", "up", "left").index(which) + 1

        def build(base: Tensor) -> list[Tensor]:
            runs = (_run(base, step[column] + shift, step[0]) for step in self.steps)
            return [_channels(run, channels) for run in runs]

        key = ("diagonal runs", self.size, which, shift, channels)
        return workspace.views(buffer, key, build)

    def leading(
        self, buffer: Tensor, batch: int, channels: tuple[int, int] | None = None
    ) -> list[Tensor]:
        """buffer[:, : n*B] per diagonal of a (D, rows, ch) buffer (of channels lo:hi only
        when `channels` is (lo, hi))."""

        def build(base: Tensor) -> list[Tensor]:
            return [_channels(base[:, : n * batch], channels) for n, *_ in self.steps]

        return workspace.views(buffer, ("diagonal leading", self.size, channels), build)

    def gates(self, buffer: Tensor) -> list[GateViews]:
        """`GateViews` of each diagonal's "out" run of a (D, slots, B, 4h) buffer."""
        hidden = buffer.shape[-1] // 4

        def build(base: Tensor) -> list[GateViews]:
            return [gate_views(_run(base, step[1], step[0]), hidden) for step in self.steps]

        return workspace.views(buffer, ("diagonal gates", self.size), build)


class DiagonalBiLSTM(nn.Module):
    """Both directions (the right-to-left one on the width-flipped map, its output flipped back
    and shifted down one row), scanned together by `DiagonalScan`, plus the 1x1 output conv.

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

    @torch.compiler.disable  # the diagonals are a Python loop: traced, they unroll
    def forward(self, x: Tensor) -> Tensor:
        """(B, 2h, H, W) -> (B, 2h, H, W), channels-last."""
        B, _, H, W = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(B, H * W, -1)  # (B, H*W, 2h): channels-last, a view
        w_in, b_in = self.input_to_state.live_weight()[:, :, 0, 0], self.input_to_state.bias
        h0, c0 = self.scan.initial_vectors(rows)  # each (2, h)
        weight = self.scan.state_to_state_matrix()  # (2, 2h, 4h)
        inputs = rows, w_in, b_in, weight, h0, c0
        recorded = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        with workspace.saved_to_pool():
            combined = DiagonalScan.apply(*inputs, H, W, recorded)  # (B, H*W, h)
        combined = combined.view(B, H, W, -1).permute(0, 3, 1, 2)  # (B, h, H, W), channels-last
        return self.output(combined.to(x.dtype, memory_format=torch.channels_last))

    def start_sampling(self, n: int, height: int, width: int, like: Tensor) -> dict:
        """The cache of `sample_at`, in image coordinates (initial state outside the image)."""
        hidden, state = self.hidden, state_dtype(like.dtype)
        h0, c0 = self.scan.initial_vectors(like)  # each (2, h)
        # Left-to-right states of row i at columns -1..W-1 (column -1: the initial state).
        h = like.new_empty(n, width + 1, hidden)
        c = like.new_empty(n, width + 1, hidden, dtype=state)
        h[:], c[:] = h0[0], c0[0]
        gates = like.new_empty(n, 8 * hidden)  # both directions' input-to-state at (i, j)
        weight = self.scan.state_to_state_matrix()  # (2, 2h, 4h): taps (i-1, j), (i, j-1)
        return dict(
            h0=h0, c0=c0, h=h, c=c,
            h_above=h[:, 1:].clone(),  # row -1: the initial state
            right_above=like.new_zeros(n, width, hidden),  # zero: the one-row shift
            right_gates=like.new_empty(n, width, 4 * hidden),  # row i's right-to-left gates
            gates=gates, right_part=gates[:, 4 * hidden :],
            cell=CellBuffers(n, hidden, like, pre=gates[:, : 4 * hidden]),
            right_cell=CellBuffers(n, hidden, like),
            c_right=like.new_empty(2, n, hidden, dtype=state),
            taps=[(w[:hidden], w[hidden:]) for w in weight],  # per direction: (up, left)
        )  # fmt: skip

    def sample_at(self, cache: dict, i: int, j: int, x: Tensor) -> Tensor:
        """Layer input (n, 2h) at (i, j) -> output (n, 2h): the left-to-right step at (i, j) plus
        the right-to-left state of (i-1, j)."""
        self.input_to_state.point(x, out=cache["gates"])  # (n, 8h)
        cache["right_gates"][:, j] = cache["right_part"]
        up, left = cache["taps"][0]
        cache["cell"].pre.addmm_(cache["h_above"][:, j], up).addmm_(cache["h"][:, j], left)
        h = cache["h"][:, j + 1]
        cache["cell"](cache["c"][:, j], cache["c"][:, j + 1], h)
        return self.output.point(h + cache["right_above"][:, j])

    def finish_row(self, cache: dict, i: int) -> None:
        """Scan row i right to left (it reaches the output one row down, after the whole row)."""
        n, width, hidden = cache["right_above"].shape
        (up, left), right_cell = cache["taps"][1], cache["right_cell"]
        h0, c0 = cache["h0"][1], cache["c0"][1]
        above = cache["right_above"] if i else h0.expand(n, width, hidden)
        right = torch.empty_like(cache["right_above"])  # (n, W, h)
        h, c = h0.expand(n, hidden), c0.expand(n, hidden)  # right of the last column
        for step, j in enumerate(reversed(range(width))):
            torch.addmm(cache["right_gates"][:, j], above[:, j], up, out=right_cell.pre)
            right_cell.pre.addmm_(h, left)
            c_new = cache["c_right"][step % 2]
            right_cell(c, c_new, right[:, j])
            h, c = right[:, j], c_new
        cache["right_above"] = right
        cache["h_above"].copy_(cache["h"][:, 1:])
