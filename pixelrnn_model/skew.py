"""Skewing for the Diagonal LSTM (van den Oord et al. 2016, section 3.2, figure 3).

Row r is shifted right by r positions, so the image's diagonals become columns and a
column-by-column scan visits them in order. Both maps are index gathers (no Python loops).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _skew_index(height: int, width: int, device: torch.device) -> Tensor:
    """Flat index into a (H, W + 2H - 2) left/right zero-padded map, for each skewed cell."""
    padded_width = width + 2 * (height - 1)
    rows = torch.arange(height, device=device)[:, None]  # (H, 1)
    cols = torch.arange(width + height - 1, device=device)[None, :]  # (1, W+H-1)
    return (rows * padded_width + cols - rows + height - 1).flatten()  # (H*(W+H-1),)


def skew(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W+H-1) with out[..., r, s] = x[..., r, s-r] (zero elsewhere)."""
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x, (H - 1, H - 1))  # (B, C, H, W+2H-2)
    index = _skew_index(H, W, x.device)
    return padded.flatten(2)[:, :, index].view(B, C, H, W + H - 1)


def unskew(x: Tensor, width: int) -> Tensor:
    """(B, C, H, W+H-1) -> (B, C, H, W), the inverse of `skew`: out[..., r, j] = x[..., r, j+r]."""
    B, C, H, skewed_width = x.shape
    rows = torch.arange(H, device=x.device)[:, None]  # (H, 1)
    cols = torch.arange(width, device=x.device)[None, :]  # (1, W)
    index = (rows * skewed_width + cols + rows).flatten()  # (H*W,)
    return x.flatten(2)[:, :, index].view(B, C, H, width)


def shift_down(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W): row r takes row r-1; row 0 becomes zeros."""
    return torch.nn.functional.pad(x, (0, 0, 1, 0))[:, :, :-1]
