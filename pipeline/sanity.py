"""Plausibility bounds on likelihoods: a number far better than the best published is a leak.

An autoregressive model that can see the sub-pixel it predicts scores superbly and samples
garbage. The evaluation code checks every validation figure it reports against the best results
published for that dataset; a figure clearly below them is flagged as a probable leak (a warning,
an MLflow tag, a line in the command's output), never presented as a win.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# dataset source name -> (metric, lowest plausible value, best published result it is set below)
PLAUSIBLE_FLOOR: dict[str, tuple[str, float, str]] = {
    "cifar10": ("bits_per_dim", 2.5, "~2.8 bits/dim, best published CIFAR-10 models"),
    "imagenet32": ("bits_per_dim", 3.0, "~3.4 bits/dim, best published ImageNet 32x32 models"),
    "imagenet64": ("bits_per_dim", 3.0, "~3.3 bits/dim, best published ImageNet 64x64 models"),
    "binarized_mnist": ("nll_nats", 60.0, "~77 nats, best published binarized-MNIST models"),
}

UNITS = {"bits_per_dim": "bits/dim", "nll_nats": "nats/image"}


def leak_warning(dataset_name: str, metrics: dict[str, float], split: str = "val") -> str | None:
    """A one-line warning when `metrics` beat the plausible floor for `dataset_name`, else None.

    Args:
        dataset_name: the prepared dataset's source ("cifar10", "binarized_mnist", ...).
        metrics: {"bits_per_dim": ..., "nll_nats": ...} of one evaluation.
        split: the split the metrics are on (for the message).
    """
    if dataset_name not in PLAUSIBLE_FLOOR:
        return None
    key, floor, reference = PLAUSIBLE_FLOOR[dataset_name]
    value = metrics.get(key)
    if value is None or value >= floor:
        return None
    unit = UNITS[key]
    return (
        f"PROBABLE LEAK: {split} {value:.4f} {unit} on {dataset_name} is below the plausible "
        f"floor of {floor} {unit} (reference: {reference}); the model most likely sees the "
        f"sub-pixel it predicts. Run the causality tests before trusting this number."
    )


def dataset_name(manifest: dict) -> str:
    """The source name recorded in a prepared dataset's manifest ("" when absent)."""
    source = manifest.get("source")
    return str((source.get("name") if isinstance(source, dict) else source) or "")
