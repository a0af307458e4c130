"""The best checkpoint as an MLflow model in a real SQLite store: stored weights-only, found
again by alias, version, model id and run, and read back without running the run's code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import tracking, tracking_models
from pipeline.checkpointing import Progress, model_from_checkpoint, save_checkpoint
from pipeline.config import merge
from pipeline.errors import PixelRNNError
from pipeline.images import save_grid
from pixelrnn_model import PixelRNN, bits_per_dim

NAME = "pixelrnn-unit"
DIGEST = "ab" * 32  # the training data's manifest sha256


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A 1-layer model's checkpoint logged and registered (alias "champion") from one run."""
    work = tmp_path_factory.mktemp("models")
    uri = f"sqlite:///{work}/mlflow.db"
    cfg = merge([{"model.num_layers": 1, "model.hidden_channels": 3, "model.head_channels": 3,
                  "tracking.tracking_uri": uri, "tracking.experiment_name": "models"}])  # fmt: skip
    torch.manual_seed(0)
    model = PixelRNN(cfg.model).eval()
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(work, model, optimizer, Progress(1, 5), cfg, {"val/bits_per_dim": 7.9},
                    (3, 4, 5))  # fmt: skip
    tracker = tracking.start_run(cfg, "r", {}, {})
    logged = tracking_models.log_model(uri, tracker.run_id, work / "checkpoint.pt", DIGEST, NAME, 5)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(NAME, "champion", "1")
    return uri, tracker, logged, model, work


def test_logged_model_is_in_the_run_s_experiment_and_registered(logged):
    _uri, tracker, info, _model, _work = logged
    assert info.registered == f"models:/{NAME}/1"
    run = tracker.client.get_run(tracker.run_id)
    (found,) = tracker.client.search_logged_models([run.info.experiment_id])
    assert found.model_id == info.model_id and found.source_run_id == tracker.run_id
    assert found.params["model.num_layers"] == "1"  # the run's config travels with the model


@pytest.mark.parametrize("which", ["alias", "version", "model_id", "run"])
def test_model_uris_lead_to_the_same_weights_only_file(logged, tmp_path, which):
    uri, tracker, info, model, _work = logged
    model_uri = {
        "alias": f"models:/{NAME}@champion",
        "version": info.registered,
        "model_id": info.model_uri,
        "run": f"runs:/{tracker.run_id}/model",
    }[which]
    weights = tracking_models.download_weights(model_uri, uri, tmp_path)
    payload = torch.load(weights, weights_only=True)  # no pickled code can be in it
    assert "optimizer" not in payload and "rng" not in payload
    assert payload["dataset_digest"] == DIGEST and payload["step"] == 5
    trained = model_from_checkpoint(weights)
    assert trained.image_shape == (3, 4, 5) and trained.metrics == {"val/bits_per_dim": 7.9}
    pixels = torch.randint(0, 256, (2, 3, 4, 5))
    with torch.no_grad():
        assert torch.equal(trained.model(pixels), model(pixels))


def test_the_pyfunc_predicts_bits_per_dim_per_image(logged):
    """What `mlflow.pyfunc.load_model` users get (it runs the model's copied code file)."""
    import mlflow.pyfunc

    uri, _tracker, info, model, _work = logged
    with tracking_models._store(uri):
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    pixels = torch.randint(0, 256, (3, 3, 4, 5))
    predicted = pyfunc.predict(pixels.numpy())
    assert predicted.shape == (3,) and predicted.dtype == np.float32
    with torch.no_grad():
        expected = [bits_per_dim(model(p[None]), p[None]).item() for p in pixels]
    np.testing.assert_allclose(predicted, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "model_uri,message",
    [("models:/nope@champion", "not found in"), ("runs:/0123abcd/model", "not found in"),
     (f"models:/{NAME}@missing", "not found in")],
)  # fmt: skip
def test_unknown_models_are_one_line_errors(logged, tmp_path, model_uri, message):
    uri = logged[0]
    with pytest.raises(PixelRNNError, match=message) as error:
        tracking_models.download_weights(model_uri, uri, tmp_path)
    assert "\n" not in str(error.value) and model_uri in str(error.value)


def test_a_model_without_pixelrnn_weights_is_refused(logged, tmp_path):
    uri, tracker, *_ = logged
    png = save_grid(torch.zeros(1, 3, 2, 2, dtype=torch.int64), 256, tmp_path / "x.png")
    tracker.log_artifact(png, "other")
    with pytest.raises(PixelRNNError, match="not a pixelrnn model"):
        tracking_models.download_weights(f"runs:/{tracker.run_id}/other", uri, tmp_path)
