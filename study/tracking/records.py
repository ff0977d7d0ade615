"""What one trial's MLflow run holds, built from its suggestion and ledger record: pure, no client, no server.

Tags, params and metric batches are made here, so what a run looks like is testable without MLflow, and the
live callback and the replay of a resumed driver build exactly the same calls.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from mlflow.entities import Metric, Param, RunTag

from study.contract import CURVE_METRICS, MLFLOW_STATUS, REPORTED_METRICS, Phase, Status
from study.phases.suggestion import Suggestion
from trainables.config_io import ConfigError, flatten

PARAMS_PER_CALL = 90  # under the server's 100-per-call limit
SEARCHER_TAG = {Phase.SEARCH: "optuna-tpe", Phase.CONFIRM: "confirmation"}


@dataclass(frozen=True)
class Batch:
    """One `log_batch` call's content."""

    metrics: tuple[Metric, ...] = ()
    params: tuple[Param, ...] = ()
    tags: tuple[RunTag, ...] = ()


def trial_params(suggestion: Suggestion, base_trial: dict) -> dict:
    """The trial's flattened config; for one no config accepts (it fails at once), what it was asked to run."""
    try:
        return flatten(suggestion.trial_config(base_trial))
    except ConfigError:
        return {**suggestion.fixed, **suggestion.overrides}


def run_tags(suggestion: Suggestion, trial_id: str, phase: Phase, parent_run_id: str) -> dict[str, str]:
    """The child run's tags: its parent, its cell and size, its arm, and where it came from."""
    return {
        "mlflow.parentRunId": parent_run_id,
        "regime": suggestion.cell,
        "images": str(suggestion.images or ""),  # the cell's training-set size
        "capacity": suggestion.capacity,
        "trial_id": trial_id,
        "searcher": SEARCHER_TAG.get(phase, phase),
        "phase": phase,
        "role": suggestion.role,
        "optuna_trial": "" if suggestion.optuna_trial is None else str(suggestion.optuna_trial),
        **({"round": str(suggestion.round), "placed_by": suggestion.placed_by} if suggestion.round is not None else {}),
    }


def _param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def param_batches(params: dict) -> list[Batch]:
    """A trial's params as batches of at most PARAMS_PER_CALL."""
    items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
    return [Batch(params=tuple(items[start : start + PARAMS_PER_CALL])) for start in range(0, len(items), PARAMS_PER_CALL)]


def metric_batch(values: dict, step: int, names: tuple[str, ...] = REPORTED_METRICS) -> Batch:
    """The named metrics among a trial's values (by default those of an eval point), at one kimg step."""
    now = int(time.time() * 1000)
    return Batch(metrics=tuple(Metric(k, float(values[k]), now, step) for k in names if isinstance(values.get(k), (int, float))))


def closing_batch(record: dict) -> Batch:
    """The trial's curve statistics (at its last step) and its status tags; an onset never reached is a tag,
    never a number."""
    reason = record.get("reason", "")
    tags = [RunTag("status", record["status"])] + ([RunTag("failure_reason", reason)] if reason else [])
    curve = record.get("curve", {})
    if curve.get("memorization_onset_censored"):
        tags.append(RunTag("memorization_onset", "not reached"))
    return Batch(metric_batch(curve, max(record.get("last_step", 0), 0), CURVE_METRICS).metrics, (), tuple(tags))


def run_status(status: str) -> str:
    """The MLflow run status of a trial status (an unknown one counts as failed)."""
    return MLFLOW_STATUS.get(status, MLFLOW_STATUS[Status.FAILED])
