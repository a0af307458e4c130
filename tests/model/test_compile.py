"""torch.compile'd models give the eager model's logits (inductor on CPU, needs a C compiler)."""

import shutil

import pytest
import torch

from pixelrnn_model import ModelConfig, PixelRNN

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile needs cc")


@pytest.mark.parametrize("layer", ["row_lstm", "diagonal_bilstm", "pixelcnn"])
def test_compiled_and_eager_logits_agree(layer):
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(layer=layer, num_layers=2, hidden_channels=6, head_channels=12))
    pixels = torch.randint(0, 256, (2, 3, 5, 4))
    with torch.no_grad():
        eager = model(pixels)
        compiled = torch.compile(model)(pixels)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert not torch.equal(eager[0], eager[1])  # the comparison is over informative logits
