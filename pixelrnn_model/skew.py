"""Row shift for the Diagonal BiLSTM's right-to-left direction (van den Oord et al. 2016,
section 3.2). The skew itself is done by `diagonal_lstm.diagonal_order`, which visits the skewed
map's columns (the image's diagonals) without materialising its zero padding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shift_down(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W): row r takes row r-1; row 0 becomes zeros."""
    return torch.nn.functional.pad(x, (0, 0, 1, 0))[:, :, :-1]
