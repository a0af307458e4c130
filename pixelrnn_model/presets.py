"""The paper's model sizes (van den Oord et al. 2016, section 5 and table 1 / appendix).

R/G/B grouping needs channel counts divisible by 3, so RGB presets round the paper's sizes to
the nearest multiple of 3: h=128 -> 129, h=512 -> 513, head 1024 -> 1023 (h=384 and the MNIST
sizes are used as published).
"""

from __future__ import annotations

from pixelrnn_model.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    "mnist_diagonal_bilstm": ModelConfig(
        layer="diagonal_bilstm", num_layers=7, hidden_channels=16, head_channels=32,
        channels=1, levels=2,
    ),
    "cifar10_row_lstm": ModelConfig(
        layer="row_lstm", num_layers=12, hidden_channels=129, head_channels=1023
    ),
    "cifar10_diagonal_bilstm": ModelConfig(
        layer="diagonal_bilstm", num_layers=12, hidden_channels=129, head_channels=1023
    ),
    "cifar10_pixelcnn": ModelConfig(
        layer="pixelcnn", num_layers=15, hidden_channels=129, head_channels=1023
    ),
    "imagenet32_row_lstm": ModelConfig(
        layer="row_lstm", num_layers=12, hidden_channels=384, head_channels=1023
    ),
    "imagenet64_row_lstm": ModelConfig(
        layer="row_lstm", num_layers=4, hidden_channels=513, head_channels=1023, residual=False
    ),
}  # fmt: skip
