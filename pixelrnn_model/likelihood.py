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
    # One row per sub-pixel, ordered (B, H, W, C): the network's logits hold them in that order
    # with the levels innermost (its channels-last head), so this is a view and the softmax
    # runs over contiguous rows; the per-image sums do not depend on the order.
    rows = logits.float().permute(0, 3, 4, 2, 1).reshape(-1, levels)  # (B*H*W*C, levels)
    targets = pixels.permute(0, 2, 3, 1).reshape(-1)
    per_subpixel = F.cross_entropy(rows, targets, reduction="none")
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
