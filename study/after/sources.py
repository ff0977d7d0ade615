"""Where a model comes from: a trial's folder, a model folder, or MLflow (`runs:/<run_id>`, `models:/<name>@<alias>`)."""

from __future__ import annotations

import os
import tempfile

from study.tracking.models import download_model, is_mlflow_uri


def tracking_uri(given: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI: an MLflow URI names no store by itself."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ValueError("a runs:/ or models:/ model needs its MLflow store: pass --tracking-uri "
                         "(e.g. sqlite:///studies/demo/mlflow.db) or set MLFLOW_TRACKING_URI")
    return uri


def open_model(source: str, weights: str = "ema", device: str = "cpu", uri: str | None = None):
    """The trained model at `source` (trainables.model_file.TrialModel); an MLflow model is downloaded to a
    temporary folder, read into memory, and the folder removed."""
    from trainables.model_file import load_model

    if not is_mlflow_uri(source):
        return load_model(source, weights, device)
    with tempfile.TemporaryDirectory(prefix="scoreaug-model-") as scratch:
        return load_model(download_model(source, tracking_uri(uri), scratch), weights, device)
