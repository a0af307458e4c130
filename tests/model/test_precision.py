"""bf16 autocast gives the same bits/dim as fp32 within 0.02, and stays causal."""

import pytest
import torch

from pixelrnn_model import ModelConfig, PixelRNN, bits_per_dim

LAYERS = ("row_lstm", "diagonal_bilstm", "pixelcnn")


@pytest.mark.parametrize("layer", LAYERS)
def test_bf16_autocast_bits_per_dim_match_fp32(layer):
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(layer=layer, num_layers=3, hidden_channels=24, head_channels=48))
    pixels = torch.randint(0, 256, (8, 3, 12, 12), generator=torch.Generator().manual_seed(0))
    # A few training steps first, so the comparison is not only near-uniform logits.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = bits_per_dim(model(pixels), pixels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        fp32 = bits_per_dim(model(pixels), pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(pixels)
            bf16 = bits_per_dim(logits, pixels)
    assert logits.dtype == torch.bfloat16  # autocast really ran the model in bf16
    assert bf16.dtype == torch.float32  # and the loss still accumulates in fp32
    assert fp32.item() < 7.0
    assert abs(bf16.item() - fp32.item()) < 0.02, f"{layer}: fp32 {fp32:.4f} bf16 {bf16:.4f}"


@pytest.mark.parametrize("layer", LAYERS)
def test_bf16_model_is_still_causal(layer):
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(layer=layer, num_layers=2, hidden_channels=6, head_channels=12))
    base = torch.randint(0, 256, (1, 3, 4, 5))
    later = base.clone()
    later[0, :, 2, 3] = (later[0, :, 2, 3] + 128) % 256  # change pixel (2, 3), all colours
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.cat([base, later]))  # (2, 256, 3, 4, 5)
    earlier = logits.permute(0, 3, 4, 2, 1).flatten(1, 3)[:, : (2 * 5 + 3) * 3 + 1]
    assert torch.equal(earlier[0], earlier[1])
