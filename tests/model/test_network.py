"""Network shapes, likelihood units, config validation, presets, sampling and learning."""

import itertools
import math

import pytest
import torch

from pixelrnn_model import PRESETS, ModelConfig, PixelRNN, bits_per_dim, nll_nats, sample

LAYERS = ("row_lstm", "diagonal_bilstm", "pixelcnn")


def tiny(layer: str, **overrides) -> PixelRNN:
    torch.manual_seed(0)
    fields = dict(layer=layer, num_layers=2, hidden_channels=6, head_channels=12)
    fields.update(overrides)
    return PixelRNN(ModelConfig(**fields))


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("residual, skip", [(True, True), (False, False)])
def test_logits_shape(layer, residual, skip):
    model = tiny(layer, residual=residual, skip=skip, learn_initial_state=True)
    assert model(torch.randint(0, 256, (2, 3, 5, 4))).shape == (2, 256, 3, 5, 4)
    binary = tiny(layer, channels=1, levels=2, hidden_channels=4, head_channels=4)
    assert binary(torch.randint(0, 2, (3, 1, 4, 6))).shape == (3, 2, 1, 4, 6)


def test_uniform_logits_give_exactly_eight_bits_per_dim():
    pixels = torch.randint(0, 256, (4, 3, 5, 5))
    logits = torch.zeros(4, 256, 3, 5, 5)
    assert bits_per_dim(logits, pixels).item() == pytest.approx(8.0, abs=1e-6)
    assert nll_nats(logits, pixels).tolist() == pytest.approx([75 * math.log(256)] * 4)
    binary = torch.zeros(2, 2, 1, 28, 28)
    assert nll_nats(binary, torch.ones(2, 1, 28, 28, dtype=torch.long))[0].item() == (
        pytest.approx(784 * math.log(2), rel=1e-6)
    )


def test_nll_is_the_sum_of_per_subpixel_log_probabilities():
    logits = torch.randn(2, 4, 1, 2, 2)
    pixels = torch.randint(0, 4, (2, 1, 2, 2))
    log_probs = torch.log_softmax(logits, dim=1)
    expected = -log_probs.gather(1, pixels[:, None]).flatten(1).sum(1)
    torch.testing.assert_close(nll_nats(logits, pixels), expected)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"hidden_channels": 128},
            "hidden_channels: 128 is not divisible by channels=3.*126 or 129",
        ),
        ({"head_channels": 1024}, "head_channels: 1024 is not divisible"),
        ({"layer": "gru"}, "model.layer: expected one of"),
        ({"levels": 1}, "model.levels"),
        ({"row_kernel": 4}, "model.row_kernel: must be a positive odd size"),
    ],
)
def test_config_rejects_impossible_values_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


def test_presets_follow_the_paper():
    mnist = PRESETS["mnist_diagonal_bilstm"]
    assert (mnist.layer, mnist.num_layers, mnist.hidden_channels, mnist.head_channels) == (
        "diagonal_bilstm", 7, 16, 32,
    )  # fmt: skip
    assert (mnist.channels, mnist.levels) == (1, 2)
    for name in ("cifar10_row_lstm", "cifar10_diagonal_bilstm"):
        assert (PRESETS[name].num_layers, PRESETS[name].hidden_channels) == (12, 129)
    assert (PRESETS["cifar10_pixelcnn"].layer, PRESETS["cifar10_pixelcnn"].num_layers) == (
        "pixelcnn", 15,
    )  # fmt: skip
    assert PRESETS["imagenet32_row_lstm"].hidden_channels == 384
    assert PRESETS["imagenet64_row_lstm"].residual is False
    assert PRESETS["imagenet64_row_lstm"].num_layers == 4


@pytest.mark.parametrize("layer", LAYERS)
def test_seeded_sampling_is_reproducible_and_in_range(layer):
    model = tiny(layer)
    first = sample(model, 2, 3, 4, generator=torch.Generator().manual_seed(7))
    second = sample(model, 2, 3, 4, generator=torch.Generator().manual_seed(7))
    other = sample(model, 2, 3, 4, generator=torch.Generator().manual_seed(8))
    assert first.dtype == torch.long and first.shape == (2, 3, 3, 4)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert first.min() >= 0 and first.max() < 256


def test_sampling_keeps_the_prefix_rows_and_reports_progress():
    model = tiny("row_lstm", channels=1, levels=2, hidden_channels=4, head_channels=4)
    prefix = torch.randint(0, 2, (2, 1, 4, 3))
    calls = []
    out = sample(model, 2, 4, 3, prefix=prefix, rows=2, progress=lambda d, t: calls.append((d, t)))
    assert torch.equal(out[:, :, :2], prefix[:, :, :2])
    assert calls[-1] == (6, 6) and len(calls) == 6


def test_low_temperature_concentrates_on_the_mode():
    model = tiny("pixelcnn", channels=1, levels=2, hidden_channels=4, head_channels=4)
    with torch.no_grad():
        torch.nn.init.constant_(model.head_output.bias, 0.0)
        model.head_output.bias[1] = 3.0  # favour level 1 everywhere
        model.head_output.weight.zero_()
    cold = sample(model, 8, 3, 3, generator=torch.Generator().manual_seed(0), temperature=0.05)
    assert cold.eq(1).all()


@pytest.mark.parametrize("layer", LAYERS)
def test_overfitting_one_small_batch_drives_bits_per_dim_down(layer):
    model = tiny(layer, hidden_channels=12, head_channels=48)
    pixels = torch.randint(0, 256, (4, 3, 6, 6), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = bits_per_dim(model(pixels), pixels).item()
    for _ in range(150):
        loss = bits_per_dim(model(pixels), pixels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = bits_per_dim(model(pixels), pixels).item()
    assert start > 7.5
    assert end < 3.0, f"{layer}: {start:.2f} -> {end:.2f} bits/dim"


@pytest.mark.parametrize("layer", LAYERS)
def test_second_derivatives_are_right_or_refused(layer):
    # gradgradcheck of a 1-layer float64 model's cross-entropy with respect to one weight of its
    # layer: the PixelCNN (plain autograd) passes; the recurrent layers, whose LSTM step has a
    # hand-written backward, refuse with an error instead of returning wrong numbers.
    model = tiny(layer, num_layers=1, channels=1, levels=2, hidden_channels=2, head_channels=2)
    model = model.double()
    pixels = torch.randint(0, 2, (1, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    name = {"pixelcnn": "layers.0.conv.weight"}.get(layer, "layers.0.scan.state_to_state")
    weight = dict(model.named_parameters())[name].detach().clone().requires_grad_()

    def loss(weight: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(model, {name: weight}, (pixels,))
        return torch.nn.functional.cross_entropy(logits, pixels)

    if layer == "pixelcnn":
        assert torch.autograd.gradgradcheck(loss, (weight,))
    else:
        with pytest.raises(RuntimeError, match="differentiable once"):
            torch.autograd.gradgradcheck(loss, (weight,))


CHECKPOINT_FORMAT = {  # h = 6, learned initial state: what published checkpoints hold
    "row_lstm": {
        "input_to_state.weight": (24, 12, 1, 3),
        "input_to_state.bias": (24,),
        "scan.state_to_state": (1, 24, 6, 3),  # (D, 4h, h, k), a Conv1d weight per direction
        "scan.initial_hidden": (1, 6),
        "scan.initial_cell": (1, 6),
        "output.weight": (12, 6, 1, 1),
        "output.bias": (12,),
    },
    "diagonal_bilstm": {
        "input_to_state.weight": (48, 12, 1, 1),
        "input_to_state.bias": (48,),
        "scan.state_to_state": (2, 24, 6, 2),
        "scan.initial_hidden": (2, 6),
        "scan.initial_cell": (2, 6),
        "output.weight": (12, 6, 1, 1),
        "output.bias": (12,),
    },
}


@pytest.mark.parametrize("layer", CHECKPOINT_FORMAT)
def test_recurrent_layers_keep_the_published_checkpoint_format(layer):
    # Checkpoints trained before the model-core refactor (issue 19) load unchanged: same keys,
    # same shapes (the state-to-state weight keeps its Conv1d layout).
    model = tiny(layer, num_layers=1, learn_initial_state=True)
    prefix = "layers.0."
    layer_state = {
        key.removeprefix(prefix): tuple(value.shape)
        for key, value in model.state_dict().items()
        if key.startswith(prefix)
    }
    assert layer_state == CHECKPOINT_FORMAT[layer]


@pytest.mark.parametrize("layer", ["row_lstm", "diagonal_bilstm", "pixelcnn"])
def test_parameter_gradients_do_not_share_memory(layer):
    # Gradient clipping and accumulation change .grad in place: no two parameters' gradients may
    # overlap in memory (a stacked or summed weight's backward can hand out views of one tensor).
    model = tiny(layer, num_layers=3, learn_initial_state=True)
    pixels = torch.randint(0, 256, (2, 3, 4, 5), generator=torch.Generator().manual_seed(0))
    bits_per_dim(model(pixels), pixels).backward()
    spans = []
    for name, parameter in model.named_parameters():
        grad = parameter.grad
        start = grad.data_ptr()
        end = start + grad.numel() * grad.element_size()  # contiguous or a disjoint slice
        spans.append((start, end, name))
    spans.sort()
    for (_, end, name), (start, _, other) in itertools.pairwise(spans):
        assert end <= start, f"the gradients of {name} and {other} overlap"


@pytest.mark.parametrize("residual", [True, False])
def test_row_lstm_skip_sum_read_inside_the_wavefront_matches_the_streams_path(residual):
    # The Row LSTM network reads its skip connections' sum from the wavefront's own buffers
    # (the L streams never leave it); the general path stacks the streams and applies the skip
    # convs as one product. Same logits and parameter gradients in float64.
    def run(model, swap):
        if swap:
            model.skip_features = lambda x: model.skip_sum(model.streams(x))
        torch.manual_seed(3)
        pixels = torch.randint(0, 256, (2, 3, 5, 4))
        logits = model(pixels)
        upstream = torch.randn(logits.shape, dtype=torch.float64)
        (logits * upstream).sum().backward()
        return logits.detach(), {n: p.grad for n, p in model.named_parameters()}

    results = [
        run(
            tiny("row_lstm", num_layers=3, residual=residual, learn_initial_state=True).double(),
            swap,
        )
        for swap in (False, True)
    ]
    (ours, our_grads), (theirs, their_grads) = results
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert our_grads.keys() == their_grads.keys()
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, their_grads[name], rtol=1e-10, atol=1e-12, msg=name)
