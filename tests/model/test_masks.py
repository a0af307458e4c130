"""Literal mask tables for small kernels and the per-block R/G/B grouping."""

import pytest
import torch

from pixelrnn_model.masks import causal_mask, colour_groups


def test_3x3_spatial_masks_for_one_channel():
    mask_a = causal_mask(1, 1, (3, 3), colours=1, mask_type="A")[0, 0]
    mask_b = causal_mask(1, 1, (3, 3), colours=1, mask_type="B")[0, 0]
    assert mask_a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert mask_b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]


def test_1x3_row_mask_keeps_left_neighbour_and_centre():
    mask = causal_mask(1, 1, (1, 3), colours=1, mask_type="B")[0, 0]
    assert mask.tolist() == [[1, 1, 0]]


def test_centre_tap_colour_tables_for_rgb():
    centre_a = causal_mask(3, 3, (3, 3), colours=3, mask_type="A")[:, :, 1, 1]
    centre_b = causal_mask(3, 3, (3, 3), colours=3, mask_type="B")[:, :, 1, 1]
    assert centre_a.tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]  # rows: out R, G, B
    assert centre_b.tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    # Positions before the centre connect every colour to every colour.
    assert causal_mask(3, 3, (3, 3), 3, "A")[:, :, 0, :].eq(1).all()


def test_gate_blocks_are_each_grouped_by_colour():
    # 4 gate blocks of h=6: each block is [R R G G B B].
    assert colour_groups(24, colours=3, blocks=4).tolist() == [0, 0, 1, 1, 2, 2] * 4
    centre = causal_mask(24, 6, (1, 1), 3, "B", out_blocks=4)[:, :, 0, 0]  # (24, 6)
    expected_block = [[1, 1, 0, 0, 0, 0]] * 2 + [[1, 1, 1, 1, 0, 0]] * 2 + [[1] * 6] * 2
    assert centre.tolist() == expected_block * 4


def test_channels_that_do_not_split_by_colour_are_rejected():
    with pytest.raises(ValueError, match="divisible by 3"):
        colour_groups(8, colours=3)
    with pytest.raises(ValueError, match="odd"):
        causal_mask(3, 3, (2, 2), 3, "B")
    with pytest.raises(ValueError, match="'A' or 'B'"):
        causal_mask(3, 3, (3, 3), 3, "C")


def test_mask_is_a_non_persistent_buffer():
    from pixelrnn_model.masked_conv import MaskedConv2d

    conv = MaskedConv2d(3, 6, 3, colours=3, mask_type="A")
    assert "mask" not in conv.state_dict()
    rows, cols = conv.live
    assert torch.equal(conv.live_weight(), (conv.weight * conv.mask)[:, :, rows, cols])


@pytest.mark.parametrize(
    ("kernel", "mask_type", "colours", "cropped"),
    [
        ((7, 7), "A", 3, (4, 7)),  # rows below the centre are dead
        ((3, 3), "B", 3, (2, 3)),
        ((1, 3), "B", 3, (1, 2)),  # the Row LSTM's input-to-state: the right tap is dead
        ((5, 5), "B", 1, (3, 5)),
        ((1, 1), "B", 3, None),  # nothing to crop
    ],
)
def test_cropped_masked_conv_equals_the_dense_masked_conv(kernel, mask_type, colours, cropped):
    import torch.nn.functional as F

    from pixelrnn_model.masked_conv import ConvWindow, MaskedConv2d

    torch.manual_seed(0)
    conv = MaskedConv2d(6, 12, kernel, colours, mask_type).double()
    window = None if conv.crop_padding is None else tuple(s.stop - s.start for s in conv.live)
    assert window == cropped
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    dense_x = x.detach().clone().requires_grad_()
    out = conv(x)
    dense = F.conv2d(dense_x, conv.weight * conv.mask, conv.bias, padding=conv.padding)
    assert out.shape == dense.shape == (2, 12, 5, 7)
    assert torch.allclose(out, dense, atol=1e-12)
    grad = torch.randn_like(out)
    (weight_grad,) = torch.autograd.grad(out, conv.weight, grad, retain_graph=True)
    dense_weight_grad, dense_x_grad = torch.autograd.grad(dense, (conv.weight, dense_x), grad)
    (x_grad,) = torch.autograd.grad(out, x, grad)
    assert torch.allclose(weight_grad, dense_weight_grad, atol=1e-12)
    assert torch.allclose(x_grad, dense_x_grad, atol=1e-12)
    # The samplers' one-position evaluation over a map filled position by position gives the
    # same output at every position (edges included); a 1x1 conv also through `point`.
    with torch.no_grad():
        window = ConvWindow(conv, 2, 5, 7, x)
        for i in range(5):
            for j in range(7):
                window.put(i, j, x[:, :, i, j])
        for i in range(5):
            for j in range(7):
                torch.testing.assert_close(window.at(i, j), out[:, :, i, j], rtol=0, atol=1e-12)
                if kernel == (1, 1):
                    point = conv.point(x[:, :, i, j], outputs=slice(4, 8))
                    torch.testing.assert_close(point, out[:, 4:8, i, j], rtol=0, atol=1e-12)
