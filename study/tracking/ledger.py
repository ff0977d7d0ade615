"""The driver's ledger: one record per trial of a phase, with everything it reported and how it ended.

`results.parquet`, the report and the failure count are built from it, and a resumed driver replays from it
whatever MLflow lacks. It is rewritten atomically at every event, so a killed driver loses nothing it saw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from study.phases.suggestion import Suggestion
from study.contract import FAILURE_KEYS, REPORTED_METRICS, trial_status
from study.stats.scaling import curve_statistics
from trainables.files import write_text_atomic

LEGACY_NAME = "mlflow_runs_{phase}.json"  # studies started before the ledger had its own name resume from it


def nimg_step(kimg: float) -> int:
    """Steps are integers: the kimg axis in images (kimg x 1000)."""
    return int(round(kimg * 1000))


def records_file(output: Path, phase: str) -> Path:
    path = Path(output) / f"trials_{phase}.json"
    legacy = Path(output) / LEGACY_NAME.format(phase=phase)
    return legacy if legacy.exists() and not path.exists() else path


def load_records(output: Path, phase: str) -> dict[str, dict]:
    path = records_file(output, phase)
    return json.loads(path.read_text()) if path.exists() else {}


def run_name(suggestion: Suggestion, trial_id: str, phase: str) -> str:
    """The MLflow run name: cell, role, then the Optuna trial number of a searched trial or the seed of a seeded
    re-run, then the Tune trial id (unique), so a chart's legend says which arm each curve is:
    `n22-baseline-s1000-3936e74c`, `n22-search-t2-5a21d311`."""
    searched = phase == "search" and suggestion.optuna_trial is not None
    parts = [suggestion.cell, suggestion.role, f"t{suggestion.optuna_trial}" if searched else f"s{suggestion.seed}", trial_id]
    return "-".join(str(part) for part in parts if part)


def failure_reason(failure: dict) -> str:
    """One line for a trial's failure report: 'config error: ...', 'data error: ...', or the error itself."""
    kind, error = failure["error_kind"], failure.get("error", "")
    return error if kind in ("error", "diverged") else f"{kind} error: {error}"


class Ledger:
    """The records of one phase, keyed by Tune trial id."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        self.records = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.records, indent=1))

    def open(self, trial_id: str, phase: str, suggestion: Suggestion, params: dict, tags: dict) -> dict:
        record = self.records[trial_id] = {
            "run_id": None, "run_name": run_name(suggestion, trial_id, phase), "tags": tags, "last_step": -1,
            "phase": phase, "suggestion": suggestion.to_tune(), "params": params, "history": [], "started": time.time()}
        self.save()
        return record

    def add_point(self, trial_id: str, result: dict) -> int | None:
        """Record an eval point; returns its step, or None for one already recorded (a resumed trial re-reporting)."""
        record = self.records[trial_id]
        step = nimg_step(result.get("kimg", 0.0))
        if step <= record["last_step"]:
            return None
        record["last_step"] = step
        record["last_result"] = {k: result[k] for k in REPORTED_METRICS if k in result}
        if "first_step_at" in result and "first_step_at" not in record:
            record["first_step_at"] = result["first_step_at"]
        record["history"].append(record["last_result"])
        self.save()
        return step

    def add_failure(self, trial_id: str, result: dict) -> None:
        """The trial's one failure report (trainables/failures.py): kept for its status, never an eval point."""
        self.records[trial_id]["failure"] = {k: result[k] for k in FAILURE_KEYS if k in result}
        self.save()

    def finish(self, trial_id: str, errored: bool, reason: str, total_kimg: float, onset_threshold: float) -> dict:
        """Close the record: its status (contract.trial_status), reason and curve statistics."""
        record = self.records[trial_id]
        failure = record.get("failure", {})
        status = trial_status({**record.get("last_result", {"kimg": 0.0}), **failure}, errored, total_kimg)
        record.update(status=status, reason=(failure_reason(failure) if failure else reason)[:500], ended=time.time(),
                      curve=curve_statistics(record["history"], onset_threshold))
        self.save()
        return record

    def mark(self, trial_id: str, **fields) -> None:
        self.records[trial_id].update(fields)
        self.save()
