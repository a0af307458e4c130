"""The full PixelRNN / PixelCNN network (van den Oord et al. 2016, sections 3.4-3.5, figure 4).

7x7 mask-A convolution -> L layers (Row LSTM, Diagonal BiLSTM or PixelCNN blocks) on a 2h-wide
residual stream -> learnable skip connections -> two ReLU + 1x1 mask-B layers -> a `levels`-way
softmax per sub-pixel, R -> G -> B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrnn_model.config import ModelConfig
from pixelrnn_model.conv_lstm import state_dtype
from pixelrnn_model.diagonal_lstm import DiagonalBiLSTM
from pixelrnn_model.masked_conv import MaskedConv2d
from pixelrnn_model.pixelcnn import PixelCNNBlock
from pixelrnn_model.row_lstm import RowLSTM, row_lstm_stack


def make_layer(cfg: ModelConfig) -> nn.Module:
    """One (B, 2h, H, W) -> (B, 2h, H, W) layer of the configured type."""
    width, hidden, colours = 2 * cfg.hidden_channels, cfg.hidden_channels, cfg.channels
    if cfg.layer == "row_lstm":
        return RowLSTM(width, hidden, colours, cfg.row_kernel, cfg.learn_initial_state)
    if cfg.layer == "diagonal_bilstm":
        return DiagonalBiLSTM(width, hidden, colours, cfg.learn_initial_state)
    return PixelCNNBlock(width, hidden, colours, cfg.pixelcnn_kernel)


class PixelRNN(nn.Module):
    """Autoregressive image model over raster order and R -> G -> B within a pixel.

    Args:
        cfg: the architecture.
    """

    #: Memory layout of the feature maps. Channels-last: every convolution reads and writes
    #: (B, H, W, channels) rows, the Row LSTM's scan reads its gates and writes its states in
    #: that layout, and the Diagonal BiLSTM gathers from and writes back to it.
    memory_format: torch.memory_format = torch.channels_last

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        width, colours = 2 * cfg.hidden_channels, cfg.channels
        self.input_conv = MaskedConv2d(colours, width, cfg.first_kernel, colours, "A")
        self.layers = nn.ModuleList(make_layer(cfg) for _ in range(cfg.num_layers))
        self.skips = nn.ModuleList(
            MaskedConv2d(width, width, 1, colours, "B")
            for _ in range(cfg.num_layers if cfg.skip else 0)
        )
        self.head_hidden = MaskedConv2d(width, cfg.head_channels, 1, colours, "B")
        self.head_output = MaskedConv2d(cfg.head_channels, colours * cfg.levels, 1, colours, "B")

    def features(self, pixels: Tensor) -> Tensor:
        """int64 (B, C, H, W) in [0, levels) -> scaled float (B, C, H, W) in [-1, 1]."""
        scale = 2.0 / (self.config.levels - 1)
        return pixels.to(self.input_conv.weight.dtype) * scale - 1.0

    def forward(self, pixels: Tensor) -> Tensor:
        """int64 pixels (B, C, H, W) in [0, levels) -> logits (B, levels, C, H, W) of every
        sub-pixel given the ones before it."""
        B, C, H, W = pixels.shape
        features = self.features(pixels).contiguous(memory_format=self.memory_format)
        # (B, 2h, H, W); with one colour the input is both layouts at once and the conv answers
        # in the standard one: made channels-last here, so no layer has to convert it
        x = self.input_conv(features).contiguous(memory_format=self.memory_format)
        if self.config.skip:
            features = self.skip_features(x)
        else:
            features = self.streams(x)[..., -1, :].permute(0, 3, 1, 2)
        hidden = self.head_hidden(F.relu(features))  # (B, head, H, W)
        logits = self.head_output(F.relu(hidden))  # (B, C*levels, H, W), grouped by colour
        return logits.view(B, C, self.config.levels, H, W).transpose(1, 2)

    def streams(self, x: Tensor) -> Tensor:
        """The residual stream after each layer, from the first conv's output x (B, 2h, H, W):
        (B, H, W, L, 2h), each position's L streams side by side."""
        if self.config.layer == "row_lstm":  # the whole stack as one wavefront
            return row_lstm_stack(x, list(self.layers), self.config.residual)
        return self.layer_by_layer(x)

    def layer_by_layer(self, x: Tensor) -> Tensor:
        """`streams` calling each layer's forward in turn."""
        streams = []
        for layer in self.layers:
            out = layer(x)
            x = x + out if self.config.residual else out
            streams.append(x.permute(0, 2, 3, 1))  # channels-last: a view
        return torch.stack(streams, 3)

    def skip_features(self, x: Tensor) -> Tensor:
        """The skip connections' sum over layers (B, 2h, H, W), channels-last, from the first
        conv's output x. A Row LSTM's wavefront computes it from its own stream buffer."""
        if self.config.layer == "row_lstm":
            weight, bias = self.skip_weights()
            read = (weight.transpose(1, 2), bias)  # (L, 2h, 2h): stream channel x output
            features = row_lstm_stack(x, list(self.layers), self.config.residual, read)
            return features.permute(0, 3, 1, 2)
        return self.skip_sum_by_layer(x)

    def skip_sum_by_layer(self, x: Tensor) -> Tensor:
        """`skip_sum` of `layer_by_layer`'s streams, each layer's skip product added to the sum
        as soon as its stream exists (no (B, H, W, L, 2h) stack of the streams is made): from the
        first conv's output x (B, 2h, H, W) to (B, 2h, H, W), channels-last, summed in float32 or
        wider."""
        B, width, H, W = x.shape
        weight, bias = self.skip_weights()
        total = None
        for layer, skip_weight in zip(self.layers, weight, strict=True):
            out = layer(x)
            x = x + out if self.config.residual else out
            stream = x.permute(0, 2, 3, 1).reshape(-1, width)  # (B*H*W, 2h): a channels-last view
            if total is None:
                total = F.linear(stream, skip_weight, bias)
                total = total.to(state_dtype(total.dtype))
            else:
                total = total.add_(F.linear(stream, skip_weight))
        return total.view(B, H, W, width).permute(0, 3, 1, 2)

    def skip_weights(self) -> tuple[Tensor, Tensor]:
        """Every layer's masked 1x1 skip conv, (L, 2h out, 2h in), and their summed bias (2h)."""
        weight = torch.stack([skip.weight for skip in self.skips])[..., 0, 0]
        weight = weight * self.skips[0].mask[:, :, 0, 0]
        biases = torch.stack([skip.bias for skip in self.skips])  # (L, 2h)
        # Summed by a product, not .sum(0): its backward expands one gradient to every layer, and
        # autograd would hand each bias a view of the same memory (in-place clipping of one
        # would scale them all).
        return weight, biases.new_ones(len(self.skips)) @ biases

    def skip_sum(self, streams: Tensor) -> Tensor:
        """The sum of every layer's 1x1 skip conv of its stream, as one product over the
        streams (B, H, W, L, 2h) seen as (B, H, W, L*2h): @ (L*2h, 2h) -> (B, 2h, H, W),
        channels-last."""
        weight, bias = self.skip_weights()
        matrix = weight.permute(1, 0, 2).reshape(weight.shape[1], -1)  # (2h, L*2h)
        return F.linear(streams.flatten(3), matrix, bias).permute(0, 3, 1, 2)
