"""Every tune space names real config keys, with values the config accepts and the model builds."""

from __future__ import annotations

import random

import pytest
from ray.tune.search.sample import Categorical, Domain, Float, Integer

from pipeline.config import ExperimentConfig, coerce, field_types, load_config, merge
from pipeline.tune import get_space
from tune_spaces import SPACES

FAMILIES = {"row_lstm", "diagonal_bilstm", "pixelcnn", "cross_architecture"}


def values_of(domain):
    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Float | Integer):
        return [domain.lower, domain.upper]
    if isinstance(domain, dict):
        return list(domain["grid_search"])
    assert not isinstance(domain, Domain), f"unexpected search primitive {domain!r}"
    return [domain]


def test_the_registry_holds_one_space_per_family():
    assert set(SPACES) == FAMILIES


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_key_resolves_to_a_config_field_of_the_right_type(name):
    types = field_types()
    for key, domain in SPACES[name].items():
        assert key in types, f"{name}: {key} is not a config field"
        for value in values_of(domain):
            assert coerce(key, value) == value, f"{name}: {key}={value!r}"
    assert get_space(name) is SPACES[name]  # the sweep's own check agrees


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_hidden_and_head_sizes_split_evenly_into_rgb_groups(name):
    for key in ("model.hidden_channels", "model.head_channels"):
        for value in values_of(SPACES[name].get(key, 3)):
            assert value % 3 == 0, f"{name}: {key}={value} is not divisible by 3 channels"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_sampled_trials_are_valid_experiments(name):
    """Draws build a validated config on top of the smoke experiment (RGB, 8x8 crops)."""
    smoke = load_config("experiments/smoke.yaml").to_flat()
    rng = random.Random(0)
    for _ in range(20):
        params = {
            key: rng.choice(values_of(domain)) if isinstance(domain, Domain) else domain
            for key, domain in SPACES[name].items()
        }
        cfg = merge([smoke, params])
        assert isinstance(cfg, ExperimentConfig)
        for key, value in params.items():
            assert cfg.to_flat()[key] == value


def test_family_spaces_fix_their_layer_type():
    for name in ("row_lstm", "diagonal_bilstm", "pixelcnn"):
        assert SPACES[name]["model.layer"] == name
    assert set(SPACES["cross_architecture"]["model.layer"].categories) == set(
        FAMILIES - {"cross_architecture"}
    )
