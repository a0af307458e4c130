"""The cached sampler against the naive one: same logits at every step, same images per seed.

Float64 models with random learned initial states, so the Diagonal BiLSTM's left-padding
boundary states and the Row LSTM's h_0 are exercised; small non-square images.
"""

from __future__ import annotations

import pytest
import torch

from pixelrnn_model import ModelConfig, PixelRNN, sample

LAYERS = ("row_lstm", "diagonal_bilstm", "pixelcnn")
KINDS = {"rgb": {"channels": 3, "levels": 256}, "binary": {"channels": 1, "levels": 2}}
HEIGHT, WIDTH = 5, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(layer: str, kind: str, **overrides) -> PixelRNN:
    colours = KINDS[kind]["channels"]
    fields = dict(
        layer=layer,
        num_layers=2,
        hidden_channels=6 * colours,
        head_channels=12 * colours,
        learn_initial_state=True,
    )
    fields.update(KINDS[kind], **overrides)
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(**fields)).double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("initial_hidden", "initial_cell")):
                parameter.normal_(std=0.5)
    return model


def run(model: PixelRNN, method: str, seed: int = 1, **kwargs) -> tuple[torch.Tensor, list]:
    """(images, [(i, j, c, logits)]) of one seeded sampling run."""
    steps = []

    def hook(i, j, c, logits):
        steps.append((i, j, c, logits.clone()))

    images = sample(
        model,
        3,
        HEIGHT,
        WIDTH,
        generator=torch.Generator().manual_seed(seed),
        method=method,
        logits_hook=hook,
        **kwargs,
    )
    return images, steps


def assert_same_run(model: PixelRNN, **kwargs) -> torch.Tensor:
    naive_images, naive_steps = run(model, "naive", **kwargs)
    cached_images, cached_steps = run(model, "cached", **kwargs)
    assert [s[:3] for s in cached_steps] == [s[:3] for s in naive_steps]
    for (i, j, c, naive), (_, _, _, cached) in zip(naive_steps, cached_steps, strict=True):
        torch.testing.assert_close(
            cached, naive, rtol=1e-10, atol=1e-10, msg=f"logits at (i={i}, j={j}, c={c})"
        )
    assert torch.equal(cached_images, naive_images)
    return cached_images


@pytest.mark.parametrize("residual_skip", [True, False], ids=["residual+skip", "plain"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer", LAYERS)
def test_cached_sampler_reproduces_the_naive_one(layer, kind, residual_skip):
    model = make_model(layer, kind, residual=residual_skip, skip=residual_skip)
    images = assert_same_run(model)
    assert images.shape == (3, KINDS[kind]["channels"], HEIGHT, WIDTH)
    assert len(images.unique()) > 1


@pytest.mark.parametrize("layer", LAYERS)
def test_other_kernels_and_zero_initial_state(layer):
    model = make_model(
        layer, "rgb", first_kernel=3, row_kernel=5, pixelcnn_kernel=5, learn_initial_state=False
    )
    assert_same_run(model, temperature=0.7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer", LAYERS)
def test_completion_keeps_the_prefix_in_both_samplers(layer, kind):
    model = make_model(layer, kind)
    levels, colours = KINDS[kind]["levels"], KINDS[kind]["channels"]
    prefix = torch.randint(
        0, levels, (3, colours, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(5)
    )
    images = assert_same_run(model, prefix=prefix, rows=2)
    assert torch.equal(images[:, :, :2], prefix[:, :, :2])
    # The completion depends on the prefix: a different prefix changes the first drawn logits.
    _, steps = run(model, "cached", prefix=prefix, rows=2)
    _, other = run(model, "cached", prefix=(prefix + 1) % levels, rows=2)
    assert steps[0][:3] == (2, 0, 0)
    assert not torch.equal(steps[0][3], other[0][3])


def test_progress_is_reported_identically():
    model = make_model("row_lstm", "binary")
    reports = {"naive": [], "cached": []}
    for method, calls in reports.items():
        sample(model, 2, 3, 2, method=method, progress=lambda *call, log=calls: log.append(call))
    assert reports["cached"] == reports["naive"] == [(k, 6) for k in range(1, 7)]


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method must be one of"):
        sample(make_model("pixelcnn", "binary"), 1, 2, 2, method="fast")


def test_sampling_restores_training_mode_and_keeps_no_weights():
    model = make_model("diagonal_bilstm", "binary").train()
    sample(model, 1, 2, 2)
    assert model.training
    # The weights computed once for the run (masked, state-to-state matrices) are dropped.
    frozen = [m for m in model.modules() if getattr(m, "frozen", None) is not None]
    assert frozen == [] and any(hasattr(m, "frozen") for m in model.modules())


def test_seed_draws_with_a_generator_on_the_models_device():
    model = make_model("row_lstm", "binary")
    device = next(model.parameters()).device
    seeded = sample(model, 2, 3, 2, seed=4)
    explicit = sample(model, 2, 3, 2, generator=torch.Generator(device=device).manual_seed(4))
    assert torch.equal(seeded, explicit)
    with pytest.raises(ValueError, match="either generator or seed"):
        sample(model, 1, 2, 2, seed=1, generator=torch.Generator())


def test_draws_are_multinomial_with_the_generator_at_the_temperature():
    # The draws equal torch.multinomial with that generator on the tempered softmax, and come
    # back on the logits' device. (Its move to a generator on another device needs a GPU: here
    # both are on CPU.)
    from pixelrnn_model.sampling import draw

    logits = torch.randn(5, 7, dtype=torch.float64)
    drawn = draw(logits, 0.8, torch.Generator().manual_seed(3))
    probs = torch.softmax(logits.float() / 0.8, dim=-1)
    expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(3))[:, 0]
    assert torch.equal(drawn, expected) and drawn.device == logits.device
