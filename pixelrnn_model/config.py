"""Model hyper-parameters (van den Oord et al. 2016, sections 3 and 5).

`ModelConfig` is the single owner of every model default; experiment files, CLI overrides and
tune spaces only override its fields.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYER_TYPES = ("row_lstm", "diagonal_bilstm", "pixelcnn")


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"model.{field}: {message}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a PixelRNN / PixelCNN.

    Attributes:
        layer: "row_lstm", "diagonal_bilstm" or "pixelcnn".
        num_layers: recurrent layers (or PixelCNN residual blocks) after the 7x7 mask-A conv.
        hidden_channels: h; the residual stream carries 2h maps. Divisible by `channels`.
        channels: image channels C (3 for RGB, 1 for binarized MNIST).
        levels: values per sub-pixel (256 for 8-bit images, 2 for binarized data).
        head_channels: width of the output head's hidden 1x1 layer. Divisible by `channels`.
        residual: residual connections around every layer.
        skip: learnable skip connections from every layer to the output head.
        first_kernel: size of the first mask-A convolution.
        row_kernel: k of the Row LSTM's 1xk input-to-state and k-wide state-to-state convs.
        pixelcnn_kernel: size of the PixelCNN's masked convolutions.
        learn_initial_state: learn the LSTM's initial hidden and cell state.
    """

    layer: str = "row_lstm"
    num_layers: int = 7
    hidden_channels: int = 48
    channels: int = 3
    levels: int = 256
    head_channels: int = 96
    residual: bool = True
    skip: bool = True
    first_kernel: int = 7
    row_kernel: int = 3
    pixelcnn_kernel: int = 3
    learn_initial_state: bool = False

    def __post_init__(self) -> None:
        _require(
            self.layer in LAYER_TYPES, "layer", f"expected one of {LAYER_TYPES}, got {self.layer!r}"
        )
        _require(self.channels >= 1, "channels", f"must be >= 1, got {self.channels}")
        _require(self.levels >= 2, "levels", f"must be >= 2, got {self.levels}")
        _require(self.num_layers >= 1, "num_layers", f"must be >= 1, got {self.num_layers}")
        for name in ("hidden_channels", "head_channels"):
            value = getattr(self, name)
            _require(
                value >= self.channels, name, f"must be >= channels={self.channels}, got {value}"
            )
            lower = value - value % self.channels
            _require(
                value % self.channels == 0,
                name,
                f"{value} is not divisible by channels={self.channels} (each R/G/B group needs an "
                f"equal share); nearest valid values: {lower} or {lower + self.channels}",
            )
        for name in ("first_kernel", "row_kernel", "pixelcnn_kernel"):
            value = getattr(self, name)
            _require(
                value >= 1 and value % 2 == 1, name, f"must be a positive odd size, got {value}"
            )
