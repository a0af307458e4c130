"""The cropped, colour-split masked convolution equals the dense masked convolution."""

import pytest
import torch

from pixelrnn_model.masked_conv import MaskedConv2d

CASES = [
    # (in, out, kernel, colours, mask, out_blocks): every kind of kernel the models use, and more
    (3, 12, 7, 3, "A", 1),  # first layer, RGB
    (1, 8, 7, 1, "A", 1),  # first layer, one channel
    (12, 24, (1, 3), 3, "B", 4),  # Row LSTM input-to-state (gate blocks)
    (12, 24, (1, 5), 3, "B", 4),
    (8, 16, (1, 3), 1, "B", 4),
    (12, 24, 1, 3, "B", 8),  # Diagonal BiLSTM input-to-state
    (12, 12, 1, 3, "B", 1),  # skips, outputs, head
    (6, 6, 1, 3, "A", 1),
    (12, 9, 3, 3, "B", 1),  # PixelCNN
    (8, 8, 3, 1, "B", 1),
    (12, 12, (3, 1), 3, "B", 1),  # k x 1: only the rows above and the centre
    (12, 12, (5, 3), 3, "A", 1),
]


@pytest.mark.parametrize("in_channels, out_channels, kernel, colours, mask, blocks", CASES)
def test_forward_and_gradients_equal_the_dense_masked_conv(
    in_channels, out_channels, kernel, colours, mask, blocks
):
    torch.manual_seed(0)
    conv = MaskedConv2d(in_channels, out_channels, kernel, colours, mask, blocks).double()
    with torch.no_grad():
        conv.weight.normal_()  # also the masked-out taps: they must not leak into the result
    x = torch.randn(2, in_channels, 5, 6, dtype=torch.float64, requires_grad=True)
    fast, dense = conv(x), conv.dense_forward(x)
    assert fast.shape == dense.shape == (2, out_channels, 5, 6)
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-12)
    grad = torch.randn_like(fast)
    inputs = (x, conv.weight, conv.bias)
    fast_grads = torch.autograd.grad(fast, inputs, grad)
    dense_grads = torch.autograd.grad(dense, inputs, grad)
    for a, b in zip(fast_grads, dense_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_masked_taps_get_no_gradient():
    conv = MaskedConv2d(6, 12, 3, 3, "B").double()
    x = torch.randn(1, 6, 4, 4, dtype=torch.float64)
    conv(x).sum().backward()
    assert conv.weight.grad[conv.mask == 0].abs().max() == 0
    assert conv.weight.grad[conv.mask == 1].abs().min() > 0


def test_state_dict_is_the_plain_conv_weight_and_bias():
    conv = MaskedConv2d(6, 12, (1, 3), 3, "B", out_blocks=4)
    assert set(conv.state_dict()) == {"weight", "bias"}
