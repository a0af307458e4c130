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
    assert torch.equal(conv.masked_weight(), conv.weight * conv.mask)
