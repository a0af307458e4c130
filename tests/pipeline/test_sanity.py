"""Likelihoods far better than the best published results are flagged as probable leaks."""

from __future__ import annotations

import pytest

from pipeline.sanity import PLAUSIBLE_FLOOR, dataset_name, leak_warning


@pytest.mark.parametrize(
    ("dataset", "metrics"),
    [
        ("cifar10", {"bits_per_dim": 2.49, "nll_nats": 5300.0}),
        ("binarized_mnist", {"bits_per_dim": 0.1, "nll_nats": 59.9}),
        ("imagenet32", {"bits_per_dim": 2.0, "nll_nats": 4300.0}),
        ("imagenet64", {"bits_per_dim": 1.5, "nll_nats": 13000.0}),
    ],
)
def test_too_good_to_be_true_is_a_probable_leak(dataset, metrics):
    warning = leak_warning(dataset, metrics, split="val")
    assert warning.startswith("PROBABLE LEAK: val ")
    assert dataset in warning and "\n" not in warning


@pytest.mark.parametrize(
    ("dataset", "metrics"),
    [
        ("cifar10", {"bits_per_dim": 2.5, "nll_nats": 5323.0}),  # the floor itself is plausible
        ("cifar10", {"bits_per_dim": 3.9, "nll_nats": 8300.0}),
        ("binarized_mnist", {"bits_per_dim": 0.12, "nll_nats": 79.2}),
        ("builtin", {"bits_per_dim": 0.01, "nll_nats": 1.0}),  # no published reference
        ("folder", {"bits_per_dim": 0.01, "nll_nats": 1.0}),
    ],
)
def test_plausible_numbers_and_unknown_datasets_pass(dataset, metrics):
    assert leak_warning(dataset, metrics) is None


def test_each_floor_sits_below_the_published_state_of_the_art():
    best_published = {"cifar10": 2.8, "imagenet32": 3.4, "imagenet64": 3.3, "binarized_mnist": 77}
    assert set(PLAUSIBLE_FLOOR) == set(best_published)
    for name, (_metric, floor, _reference) in PLAUSIBLE_FLOOR.items():
        assert floor < best_published[name]


def test_dataset_name_comes_from_the_manifest():
    assert dataset_name({"source": {"name": "cifar10", "layout": "cifar-binary"}}) == "cifar10"
    assert dataset_name({}) == ""
