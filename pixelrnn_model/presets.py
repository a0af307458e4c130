"""The paper's model sizes (van den Oord et al. 2016, section 5 and table 1 / appendix).

R/G/B grouping needs channel counts divisible by 3, so RGB presets round the paper's sizes to
the nearest multiple of 3: h=128 -> 129, h=512 -> 513, head 1024 -> 1023 (h=384 and the MNIST
sizes are used as published).

The paper sizes only its binarized-MNIST Diagonal BiLSTM (7 layers, h=16); for its MNIST Row LSTM
and PixelCNN it gives none. Ours take the same width and head: the Row LSTM the same 7 layers
(78,882 parameters against the Diagonal BiLSTM's 72,162), the PixelCNN the 15 blocks of the
paper's CIFAR-10 PixelCNN (69,442; after the 7x7 first layer each 3x3 block sees one more row
up: 7 blocks reach 10 rows above a pixel, 15 reach 18 of the 28).
"""

from __future__ import annotations

from pixelrnn_model.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    "mnist_diagonal_bilstm": ModelConfig(
        layer="diagonal_bilstm", num_layers=7, hidden_channels=16, head_channels=32,
        channels=1, levels=2,
    ),
    "mnist_row_lstm": ModelConfig(
        layer="row_lstm", num_layers=7, hidden_channels=16, head_channels=32, channels=1, levels=2,
    ),
    "mnist_pixelcnn": ModelConfig(
        layer="pixelcnn", num_layers=15, hidden_channels=16, head_channels=32, channels=1,
        levels=2,
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
