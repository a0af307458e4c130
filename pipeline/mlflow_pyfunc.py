"""The logged MLflow model's code ("models from code"): a pyfunc whose `predict` returns the
exact negative log-likelihood of each image in bits/dim (section 5.1).

MLflow copies this file into the model at logging time and runs it in `mlflow.pyfunc.load_model`
(never imported by the pipeline). It reads the model's weights-only `weights.pt` with
`torch.load(weights_only=True)` and needs only torch, numpy and `pixelrnn_model` (logged with
the model as its code path).
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch

from pixelrnn_model import ModelConfig, PixelRNN, nats_to_bits_per_dim, nll_nats

BATCH = 16  # images per forward pass


class PixelRNNBitsPerDim(mlflow.pyfunc.PythonModel):
    """int64 pixels (N, C, H, W) in [0, levels) -> float32 (N,) bits/dim of each image."""

    def load_context(self, context) -> None:
        payload = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        self.model = PixelRNN(ModelConfig(**payload["config"]["model"])).eval()
        self.model.load_state_dict(payload["model"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        pixels = torch.as_tensor(np.asarray(model_input), dtype=torch.int64)  # (N, C, H, W)
        with torch.no_grad():
            nats = [nll_nats(self.model(chunk), chunk) for chunk in pixels.split(BATCH)]
        return nats_to_bits_per_dim(torch.cat(nats), pixels[0].numel()).numpy()  # (N,)


mlflow.models.set_model(PixelRNNBitsPerDim())
