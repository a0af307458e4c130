"""Masks A and B for masked convolutions (van den Oord et al. 2016, section 3.4).

A kernel position before the centre (in raster order) is fully connected; the centre connects
output colour group g to input colour groups < g (mask A) or <= g (mask B); later positions are
cut. Channels are grouped R -> G -> B *within each block*: a conv that emits the 4h gates of an
LSTM has four blocks of h channels, and each block is split into equal R, G, B thirds.
"""

from __future__ import annotations

import torch


def colour_groups(num_channels: int, colours: int, blocks: int = 1) -> torch.Tensor:
    """Colour group in [0, colours) of every channel, int64 (num_channels,), when the channels
    split into `blocks` equal blocks, each split into `colours` contiguous equal groups."""
    if num_channels % blocks:
        raise ValueError(f"{num_channels} channels do not split into {blocks} equal blocks")
    block = num_channels // blocks
    if block % colours:
        raise ValueError(
            f"a block of {block} channels does not split into {colours} equal colour groups; "
            f"use a channel count divisible by {colours * blocks}"
        )
    return (torch.arange(num_channels) % block) // (block // colours)


def causal_mask(
    out_channels: int,
    in_channels: int,
    kernel_size: tuple[int, int],
    colours: int,
    mask_type: str,
    out_blocks: int = 1,
    in_blocks: int = 1,
) -> torch.Tensor:
    """Mask for a conv weight of shape (out_channels, in_channels, kH, kW).

    Args:
        out_channels, in_channels: the conv's channels.
        kernel_size: (kH, kW), both odd; the centre is (kH // 2, kW // 2).
        colours: image channels C.
        mask_type: "A" (first layer: a colour never sees itself) or "B" (sees itself).
        out_blocks, in_blocks: equal blocks of output / input channels, each R/G/B grouped.

    Returns:
        float32 (out_channels, in_channels, kH, kW) of zeros and ones.
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    kernel_h, kernel_w = kernel_size
    if kernel_h % 2 == 0 or kernel_w % 2 == 0:
        raise ValueError(f"masked kernels must have odd sizes, got {kernel_size}")
    centre_h, centre_w = kernel_h // 2, kernel_w // 2
    mask = torch.zeros(out_channels, in_channels, kernel_h, kernel_w)
    mask[:, :, :centre_h, :] = 1.0  # rows above the centre
    mask[:, :, centre_h, :centre_w] = 1.0  # left of the centre in its row
    out_group = colour_groups(out_channels, colours, out_blocks)[:, None]  # (out, 1)
    in_group = colour_groups(in_channels, colours, in_blocks)[None, :]  # (1, in)
    allowed = in_group < out_group if mask_type == "A" else in_group <= out_group
    mask[:, :, centre_h, centre_w] = allowed.float()
    return mask
