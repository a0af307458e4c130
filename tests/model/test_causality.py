"""Exhaustive causality: perturbing sub-pixel k never changes a logit at k or before it.

Sub-pixels are ordered by raster position, then R -> G -> B. Every sub-pixel of the image is
perturbed in turn (all perturbations batched into one forward pass, in float64), and each test
also checks that the perturbation *does* reach the logits right after it, so it cannot pass on
a model that ignores its input.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from pixelrnn_model import ModelConfig, PixelRNN

LAYERS = ("row_lstm", "diagonal_bilstm", "pixelcnn")
KINDS = {"rgb": {"channels": 3, "levels": 256}, "binary": {"channels": 1, "levels": 2}}
SIZES = ((5, 5), (4, 7), (7, 3))


def make_model(layer: str, kind: str, **overrides) -> PixelRNN:
    colours = KINDS[kind]["channels"]
    fields = dict(
        layer=layer, num_layers=2, hidden_channels=6 * colours, head_channels=32 * colours
    )
    fields.update(KINDS[kind], **overrides)
    torch.manual_seed(0)
    return PixelRNN(ModelConfig(**fields)).double().eval()


def perturbed_batch(base: torch.Tensor, levels: int) -> torch.Tensor:
    """(1, C, H, W) -> (C*H*W, C, H, W): copy k has sub-pixel k changed."""
    _, C, H, W = base.shape
    batch = base.repeat(C * H * W, 1, 1, 1)
    for k in range(C * H * W):
        i, j, c = k // (W * C), (k // C) % W, k % C
        batch[k, c, i, j] = (batch[k, c, i, j] + levels // 2) % levels
    return batch


def order_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, levels, C, H, W) -> (B, H*W*C, levels) in generation order."""
    return logits.permute(0, 3, 4, 2, 1).flatten(1, 3)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer", LAYERS)
def test_no_logit_depends_on_its_own_or_a_later_subpixel(layer, kind, size):
    assert_causal(make_model(layer, kind), layer, kind, size)


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile needs cc")
@pytest.mark.parametrize("layer", LAYERS)
def test_compiled_model_is_still_causal(layer):
    # train.compile runs the torch.compile'd model: the same exhaustive check, one size.
    assert_causal(torch.compile(make_model(layer, "rgb")), layer, "rgb", (4, 5))


@pytest.mark.parametrize("layer", LAYERS)
def test_bf16_autocast_model_is_still_causal(layer):
    # train.precision bf16: the same exhaustive check under CPU bf16 autocast, one size.
    model = make_model(layer, "rgb").float()

    def bf16_model(pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(pixels)

    assert_causal(bf16_model, layer, "rgb", (4, 5))


def assert_causal(model, layer: str, kind: str, size: tuple[int, int]) -> None:
    """The exhaustive check: every sub-pixel perturbed, no logit at or before it moves, and the
    next one does."""
    levels, C = KINDS[kind]["levels"], KINDS[kind]["channels"]
    H, W = size
    base = torch.randint(0, levels, (1, C, H, W), generator=torch.Generator().manual_seed(1))
    total = C * H * W
    with torch.no_grad():
        # The reference is computed at the same batch positions, so both see identical kernels.
        reference = order_logits(model(base.repeat(total, 1, 1, 1)))  # (K, K, levels)
        logits = order_logits(model(perturbed_batch(base, levels)))  # (K, K, levels)
    for k in range(total):
        changed = (logits[k] != reference[k]).any(dim=-1)  # (K,) which logits moved
        assert not changed[: k + 1].any(), (
            f"{layer}/{kind} {H}x{W}: perturbing sub-pixel {k} changed logits at "
            f"{changed[: k + 1].nonzero().flatten().tolist()}"
        )
        if k + 1 < total:
            j, c = (k // C) % W, k % C
            # The next colour of the same pixel, or the next pixel of the same row, must move.
            if c < C - 1 or j < W - 1:
                assert changed[k + 1], f"{layer}/{kind}: sub-pixel {k} does not reach {k + 1}"
            else:
                assert changed[k + 1 :].any(), f"{layer}/{kind}: sub-pixel {k} reaches nothing"


@pytest.mark.parametrize("kind", KINDS)
def test_diagonal_bilstm_sees_the_whole_causal_context(kind):
    """One layer: the last row's first pixel depends on the first row's last pixel."""
    model = make_model("diagonal_bilstm", kind, num_layers=1, first_kernel=3)
    levels, C = KINDS[kind]["levels"], KINDS[kind]["channels"]
    H, W = 6, 6
    base = torch.zeros(2, C, H, W, dtype=torch.long)
    base[1, :, 0, W - 1] = levels - 1
    with torch.no_grad():
        logits = model(base)
    assert not torch.equal(logits[0, :, 0, H - 1, 0], logits[1, :, 0, H - 1, 0])


def test_row_lstm_receptive_field_is_the_papers_triangle():
    """One layer, 1x1 first conv: (i, j) sees row i-d at columns j-d-1 .. j+d, nothing wider."""
    model = make_model("row_lstm", "rgb", num_layers=1, first_kernel=1)
    H, W, i, j = 6, 9, 5, 4
    for d in range(1, i + 1):
        inside = [j - d - 1, j + d]
        outside = [j - d - 2, j + d + 1]
        for column, expect_change in [(c, True) for c in inside] + [(c, False) for c in outside]:
            if not 0 <= column < W:
                continue
            base = torch.zeros(2, 3, H, W, dtype=torch.long)
            base[1, :, i - d, column] = 255
            with torch.no_grad():
                logits = model(base)[:, :, 0, i, j]
            moved = not torch.equal(logits[0], logits[1])
            assert moved == expect_change, f"row {i - d}, column {column}: moved={moved}"
