"""Every published weights file loads safely and scores what it scored when it was published.

The figure is recorded beside the files (weights/reference_scores.json, written by
benchmarks/publish_weights.py) on the first 300 validation images of the real dataset, so a
change to the model code that breaks old weights fails here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from pipeline.checkpointing import WEIGHTS_KEYS, model_from_checkpoint
from pipeline.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from publish_weights import SCORES, WEIGHTS, reference_images, score  # noqa: E402

PUBLISHED = sorted(WEIGHTS.glob("*.pt"))
RECORDED = json.loads(SCORES.read_text()) if SCORES.is_file() else {}


def test_every_published_file_has_a_recorded_score():
    assert {path.stem for path in PUBLISHED} == set(RECORDED)
    assert "mnist_diagonal_bilstm" in RECORDED


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda path: path.stem)
def test_published_weights_reproduce_their_recorded_score(path, shared_data):
    payload = torch.load(path, map_location="cpu", weights_only=True)  # no code runs on load
    assert set(WEIGHTS_KEYS) | {"dataset_digest", "dataset_name"} <= set(payload)
    assert "optimizer" not in payload and len(payload["dataset_digest"]) == 64
    recorded = RECORDED[path.stem]
    trained = model_from_checkpoint(path)
    images = reference_images(recorded["source"], shared_data, recorded["images"])
    figures = score(trained.model, images)
    assert figures["bits_per_dim"] == pytest.approx(recorded["bits_per_dim"], abs=1e-3)
    assert figures["nll_nats"] == pytest.approx(recorded["nll_nats"], abs=1e-3)


@pytest.mark.parametrize("path", PUBLISHED[:1], ids=lambda path: path.stem)
def test_sample_from_a_weights_file(path, tmp_path, one_thread):
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(path), "--n", "2", "--out", str(out)]) == 0
    assert out.is_file()
