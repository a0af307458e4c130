"""Negative log-likelihood in nats per image and bits per dimension (section 5.1).

Losses accumulate in float32 whatever the logits' precision (bf16 autocast included).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def nll_nats(logits: Tensor, pixels: Tensor) -> Tensor:
    """Negative log-likelihood of each image.

    Args:
        logits: (B, levels, C, H, W).
        pixels: int64 (B, C, H, W) in [0, levels).

    Returns:
        float32 (B,) nats per image.
    """
    levels = logits.shape[1]
    # Levels last: the network's logits hold them innermost in memory, so this is a view and
    # the softmax runs over contiguous rows (over dim 1 of the 5-D view it runs strided).
    rows = logits.float().movedim(1, -1).reshape(-1, levels)  # (B*C*H*W, levels)
    per_subpixel = F.cross_entropy(rows, pixels.reshape(-1), reduction="none")
    return per_subpixel.view(pixels.shape[0], -1).sum(1)


def nats_to_bits_per_dim(nats_per_image: Tensor | float, dims: int) -> Tensor | float:
    """Nats per image -> bits per sub-pixel, for images of `dims` = C*H*W sub-pixels."""
    return nats_per_image / (dims * math.log(2.0))


def bits_per_dim(logits: Tensor, pixels: Tensor) -> Tensor:
    """Mean over the batch of nats per image / (C*H*W * ln 2): a float32 scalar.

    Args:
        logits: (B, levels, C, H, W).
        pixels: int64 (B, C, H, W).
    """
    return nats_to_bits_per_dim(nll_nats(logits, pixels).mean(), pixels[0].numel())
