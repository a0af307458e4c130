"""The scans' buffer pool: reused across steps, never handed out while autograd still needs it."""

import pytest
import torch

from pixelrnn_model import ModelConfig, PixelRNN, bits_per_dim, workspace


@pytest.fixture
def pooled(monkeypatch):
    # Every buffer pooled, however small (the tiny models' buffers are under MIN_BYTES).
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    workspace.clear()
    yield
    workspace.clear()


def model(layer: str) -> PixelRNN:
    torch.manual_seed(0)
    cfg = ModelConfig(layer=layer, num_layers=3, hidden_channels=6, head_channels=12)
    return PixelRNN(cfg).double()


def pixels(seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (2, 3, 5, 4), generator=torch.Generator().manual_seed(seed))


def gradients(net: PixelRNN) -> list[torch.Tensor]:
    return [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("layer", ["row_lstm", "diagonal_bilstm"])
def test_a_second_training_step_reuses_every_buffer(pooled, layer):
    net, batch = model(layer), pixels(0)
    bits_per_dim(net(batch), batch).backward()
    first = workspace.stats()
    assert first["allocated"] > 0 and first["lent_bytes"] == 0
    net.zero_grad()
    bits_per_dim(net(batch), batch).backward()
    second = workspace.stats()
    assert second["allocated"] == first["allocated"]
    assert second["reused"] >= first["allocated"]
    assert second["free_bytes"] <= 2 * second["peak_lent_bytes"]


@pytest.mark.parametrize("layer", ["row_lstm", "diagonal_bilstm"])
def test_buffers_a_retained_graph_needs_are_not_handed_out(pooled, layer):
    # A graph kept with retain_graph holds its saved buffers: a forward and backward of another
    # batch in between must not overwrite them, so the second backward gives the same gradients.
    net, kept, other = model(layer), pixels(0), pixels(1)
    loss = bits_per_dim(net(kept), kept)
    loss.backward(retain_graph=True)
    expected = gradients(net)
    net.zero_grad()
    bits_per_dim(net(other), other).backward()
    net.zero_grad()
    loss.backward()
    for got, want in zip(gradients(net), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("layer", ["row_lstm", "diagonal_bilstm"])
def test_a_forward_without_a_graph_gives_its_buffers_back(pooled, layer):
    net, batch = model(layer), pixels(0)
    with torch.no_grad():
        expected = net(batch)
    assert workspace.stats()["lent_bytes"] == 0
    with torch.no_grad():
        torch.testing.assert_close(net(batch), expected, rtol=0, atol=0)
    assert workspace.stats()["reused"] > 0
