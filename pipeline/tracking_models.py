"""The best checkpoint as an MLflow model, and reading one back safely (with tracking.py, the
only importers of mlflow).

How a model is stored: a pyfunc "models from code" model named `model` in the training run. Its
files are `artifacts/weights.pt`, the weights-only file of `checkpointing.export_weights` (model
state, config, metrics, image shape, step, dataset manifest digest; no optimizer state),
`mlflow_pyfunc.py` (this package's file, whose `predict` returns bits/dim per image) and the
`pixelrnn_model` package as its code path. Nothing in it is a pickled Python object.

How pixelrnn loads one (`evaluate` / `sample --model-uri`): the model's files are downloaded
and only `weights.pt` is read, with `torch.load(weights_only=True)`; no code from the run is
executed. `mlflow.pyfunc.load_model` instead runs the model's copied `mlflow_pyfunc.py`: use it
only on models whose runs you trust.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from pipeline import checkpointing
from pipeline.errors import PixelRNNError

logger = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name within its run
WEIGHTS_KEY = "weights"
WEIGHTS_FILE = "weights.pt"
PYFUNC_FILE = Path(__file__).with_name("mlflow_pyfunc.py")


@dataclass(frozen=True)
class LoggedModel:
    """Where a logged model can be found again."""

    model_id: str
    model_uri: str  # models:/<model id>
    registered: str = ""  # models:/<name>/<version> when registered


@contextlib.contextmanager
def _store(tracking_uri: str):
    """MLflow's model functions use the global tracking URI (and the registry follows it): set
    it for one call. MLflow keeps it in MLFLOW_TRACKING_URI too, which is restored after."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets it


def log_model(
    tracking_uri: str,
    run_id: str,
    checkpoint: str | Path,
    dataset_digest: str,
    registered_model_name: str = "",
    step: int = 0,
) -> LoggedModel:
    """Log a checkpoint as the run's MLflow model (see the module docstring for its contents).

    Args:
        tracking_uri, run_id: the training run.
        checkpoint: the checkpoint to log (its optimizer and RNG state are left out).
        dataset_digest: sha256 of the training dataset's manifest, recorded in the weights.
        registered_model_name: also register it as a new version of this model ("": don't).
        step: the optimizer step the checkpoint was taken at.
    """
    import mlflow
    import numpy as np
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    import pixelrnn_model

    with tempfile.TemporaryDirectory() as tmp, _store(tracking_uri):
        weights = checkpointing.export_weights(checkpoint, Path(tmp) / WEIGHTS_FILE, dataset_digest)
        channels, height, width = torch.load(weights, weights_only=True)["image_shape"]
        shape = (-1, channels, height, width)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.int64), shape)]),  # one unnamed array
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,), "bits_per_dim")]),
        )
        info = Model.log(
            artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, step=step,
            model_id=_create_logged_model(tracking_uri, run_id),
            python_model=str(PYFUNC_FILE), artifacts={WEIGHTS_KEY: str(weights)},
            code_paths=[str(Path(pixelrnn_model.__file__).parent)], signature=signature,
            input_example=np.zeros((1, *shape[1:]), dtype=np.int64),
            pip_requirements=[f"{name}=={version(name)}" for name in ("mlflow", "torch", "numpy")],
            registered_model_name=registered_model_name or None,
        )  # fmt: skip
    registered = ""
    if info.registered_model_version is not None:
        registered = f"models:/{registered_model_name}/{info.registered_model_version}"
    logger.info(
        "MLflow model %s%s", info.model_uri, f" registered as {registered}" * bool(registered)
    )
    return LoggedModel(info.model_id, info.model_uri, registered)


def _create_logged_model(tracking_uri: str, run_id: str) -> str:
    """A logged model in the run's experiment, with the run's params (the flattened config).

    `Model.log` alone would file it under the process's active experiment (Default here).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    model = client.create_logged_model(
        run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id, params=run.data.params
    )
    return model.model_id


def download_weights(model_uri: str, tracking_uri: str, destination: str | Path) -> Path:
    """Fetch a logged model's files and return its weights file (nothing is loaded or run).

    Args:
        model_uri: `models:/<name>@<alias>`, `models:/<name>/<version>`, `models:/<model id>`
            or `runs:/<run id>/model` (the model a training run logged).
        tracking_uri: the MLflow store (also its model registry).
        destination: an existing folder.

    Raises:
        PixelRNNError: the URI names nothing, or no pixelrnn weights file.
    """
    import mlflow.artifacts

    try:
        with _store(tracking_uri):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=_logged_model_uri(model_uri, tracking_uri), dst_path=str(destination),
                tracking_uri=tracking_uri, registry_uri=tracking_uri,
            )  # fmt: skip
    except PixelRNNError:
        raise
    except Exception as error:  # MLflow raises several kinds for a bad name, alias or id
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise PixelRNNError(
            f"--model-uri {model_uri}: not found in {tracking_uri} ({first})"
        ) from None
    weights = Path(local) / "artifacts" / WEIGHTS_FILE  # what `artifacts={WEIGHTS_KEY: ...}` wrote
    if not weights.is_file():
        raise PixelRNNError(
            f"--model-uri {model_uri}: no artifacts/{WEIGHTS_FILE} in it (not a pixelrnn model)"
        )
    return weights


def _logged_model_uri(model_uri: str, tracking_uri: str) -> str:
    """`runs:/<run id>/<name>` as `models:/<model id>` when the run logged a model of that name
    (MLflow 3 keeps those outside the run's artifacts); other URIs unchanged."""
    if not model_uri.startswith("runs:/"):
        return model_uri
    from mlflow.tracking import MlflowClient

    run_id, _, name = model_uri.removeprefix("runs:/").partition("/")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(run_id)
    query = f"source_run_id = '{run_id}' AND name = '{name or MODEL_NAME}'"
    found = client.search_logged_models([run.info.experiment_id], filter_string=query)
    return f"models:/{found[0].model_id}" if found else model_uri  # else: the run's artifacts
