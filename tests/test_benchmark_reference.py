"""The throughput benchmark's per-step reference layers compute what the optimized layers do.

`benchmarks/model_throughput.py` reports speed-ups over `benchmarks/reference_layers.py`; the
ratio only means something if both produce the same logits and gradients.
"""

import sys
from pathlib import Path

import pytest
import torch

from pixelrnn_model import ModelConfig, PixelRNN, bits_per_dim

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference_layers import check_reference_matches, use_reference_layers


@pytest.mark.parametrize("layer", ["row_lstm", "diagonal_bilstm"])
def test_reference_layers_match_the_optimized_ones(layer):
    torch.manual_seed(0)
    cfg = ModelConfig(layer=layer, num_layers=2, hidden_channels=12, head_channels=24)
    model = PixelRNN(cfg).double()
    pixels = torch.randint(0, 256, (2, 3, 5, 7))
    assert check_reference_matches(model, pixels) < 1e-9

    reference = use_reference_layers(PixelRNN(cfg).double())
    reference.load_state_dict(model.state_dict())
    bits_per_dim(model(pixels), pixels).backward()
    bits_per_dim(reference(pixels), pixels).backward()
    for (name, fast), slow in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(fast.grad, slow.grad, atol=1e-9), name
