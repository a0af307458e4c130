"""PixelRNN (van den Oord, Kalchbrenner, Kavukcuoglu 2016) in plain PyTorch.

Row LSTM, Diagonal BiLSTM and PixelCNN layers with masks A/B, residual and skip connections and
a discrete softmax per sub-pixel. Imports torch only: no IO, no distributed code.
"""

from pixelrnn_model.config import LAYER_TYPES, ModelConfig
from pixelrnn_model.likelihood import bits_per_dim, nats_to_bits_per_dim, nll_nats
from pixelrnn_model.network import PixelRNN
from pixelrnn_model.presets import PRESETS
from pixelrnn_model.sampling import sample

__all__ = [
    "LAYER_TYPES",
    "PRESETS",
    "ModelConfig",
    "PixelRNN",
    "bits_per_dim",
    "nats_to_bits_per_dim",
    "nll_nats",
    "sample",
]
