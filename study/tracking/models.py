"""The trained models in MLflow: each ended trial's final EMA weights and config as its run's `model/` artifact,
the arms' chosen models registered under a name and an alias, and `runs:/` and `models:/` URIs read back.

A model is weights plus a config plus the project's loader (trainables/model_file.py): tensors only, never a
pickled module or a PyFunc, so loading it runs no code (MLflow's MLFLOW_ALLOW_MODEL_CODE_EXECUTION stays off).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from study.tracking.calls import LogArtifact
from study.tracking.sample_grids import checkpoint_location

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # the run's artifact folder holding model.pt and model.json
CHECKPOINT_KEYS = ("checkpoint_path", "checkpoint_dir_name")


class ModelSourceError(RuntimeError):
    """A runs:/ or models:/ URI that does not lead to a model; the message says which part is missing."""


def checkpoint_of(result: dict) -> dict:
    """What of a Tune result names its checkpoint (empty when the result saved none)."""
    return {key: result[key] for key in CHECKPOINT_KEYS if result.get(key)}


class TrialModels:
    """Per running trial, where its newest checkpoint is; at its end, that checkpoint's model, exported."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)
        self.checkpoints: dict[str, dict] = {}

    def seen(self, trial_id: str, result: dict) -> None:
        self.checkpoints[trial_id] = checkpoint_of(result) or self.checkpoints.get(trial_id, {})

    def calls(self, trial) -> list[LogArtifact]:
        """The ended trial's model files, as the calls that log them to its run's `model/` folder."""
        files = export_trial_model(trial, self.checkpoints.pop(trial.trial_id, {}), self.models_dir)
        return [LogArtifact(str(path), MODEL_ARTIFACT) for path in files]


def export_trial_model(trial, checkpoint: dict, models_dir: Path) -> list[Path]:
    """The trial's last checkpoint as models_dir/<trial_id>/model.pt + model.json (empty when it saved none, or
    its checkpoint cannot be read: the trial's run then lacks a model, said in one warning, and nothing else)."""
    from trainables.checkpoint import CHECKPOINT_FILE
    from trainables.model_file import ModelFileError, export_model

    location = checkpoint_location(trial, checkpoint) if checkpoint else None
    if location is None:
        return []
    fs, path = location
    try:
        with tempfile.TemporaryDirectory(prefix="model-") as scratch:
            with fs.open_input_stream(f"{path}/{CHECKPOINT_FILE}") as stream, open(Path(scratch) / CHECKPOINT_FILE, "wb") as out:
                shutil.copyfileobj(stream, out)
            return export_model(Path(scratch), Path(models_dir) / trial.trial_id)
    except (OSError, ModelFileError) as err:
        log.warning("trial %s: no model logged, its last checkpoint %s is unreadable (%s)", trial.trial_id, path, err)
        return []


@dataclass(frozen=True)
class ModelChoice:
    """A trial's model to register: under `name`, pointed to by `alias`, described by `description`."""

    name: str
    alias: str
    run_id: str
    description: str = ""


def register_models(client, choices: list[ModelChoice]) -> list[str]:
    """Each choice as a version of its registered model, with its alias; returns `models:/<name>@<alias>` URIs.
    A resumed study that registers the same run again moves the alias, never adds a duplicate version."""
    uris = []
    for choice in choices:
        if not client.search_registered_models(f"name = '{choice.name}'"):
            client.create_registered_model(choice.name, description="scoreaug-study: EMA weights + trial config; "
                                           "load with trainables.model_file.load_model")
        source = f"runs:/{choice.run_id}/{MODEL_ARTIFACT}"
        versions = client.search_model_versions(f"name = '{choice.name}' and run_id = '{choice.run_id}'")
        version = versions[0] if versions else client.create_model_version(choice.name, source, choice.run_id,
                                                                           description=choice.description)
        client.set_registered_model_alias(choice.name, choice.alias, version.version)
        uris.append(f"models:/{choice.name}@{choice.alias}")
    return uris


def is_mlflow_uri(source: str) -> bool:
    return str(source).startswith(("runs:/", "models:/"))


def download_model(source: str, tracking_uri: str, destination: Path) -> Path:
    """The folder holding model.pt and model.json of a `runs:/<run_id>[/model]` or `models:/<name>@<alias>`
    (or `models:/<name>/<version>`) URI, read from the store at `tracking_uri` (the registry too)."""
    import mlflow

    try:
        uri = _registered_source(source, tracking_uri) if source.startswith("models:/") else source
        if uri.startswith("runs:/") and uri.rstrip("/").count("/") == 1:
            uri = f"{uri.rstrip('/')}/{MODEL_ARTIFACT}"  # a run: its model folder
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri, dst_path=str(destination)))
    except Exception as err:
        raise ModelSourceError(f"{source} at {tracking_uri}: {str(err).splitlines()[0][:200]}") from None


def _registered_source(source: str, tracking_uri: str) -> str:
    """The artifact URI a registered model's version points to (MLflow's own models:/ resolution would read the
    default registry, not the store named here)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    reference = source.removeprefix("models:/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return client.get_model_version_by_alias(name, alias).source
    name, _, version = reference.partition("/")
    if not version.isdigit():
        raise ModelSourceError(f"{source}: write models:/<name>@<alias> or models:/<name>/<version>")
    return client.get_model_version(name, version).source
