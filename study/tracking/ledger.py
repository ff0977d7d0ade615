"""The driver's ledger: one record per trial of a phase, with everything it reported and how it ended.

`results.parquet`, the report and the failure count are built from it, and a resumed driver replays from it
whatever MLflow lacks. It is an append-only log, `trials_<phase>.jsonl`: one short JSON line per event (a trial
opened, an eval point, a failure report, its end, a mark such as its MLflow run id), so an event costs the same at
the 10,000th trial as at the first, and a killed driver loses nothing it saw (each line is flushed as it happens;
a trial's end is also fsync'd, so a host crash loses at most the events since the last ended trial). The records
are rebuilt by replaying the lines; a line torn by a killed driver is ignored, and the next driver starts a new
line after it.

A trial the ledger holds but Tune never saved (the driver was killed between the two) is *lost*: a `lost` line
moves its record out of the phase's records into `Ledger.lost`, so nothing that reads the records (the phase's end,
the design's replay, the results, the failure count) waits on it or counts it beside its re-run; its searcher,
restored from Tune's state, places it again under a new id (tracking/lost.py decides which records are lost).

Study folders from before the log hold one JSON dict (`trials_<phase>.json`, or `mlflow_runs_<phase>.json` for
the oldest): they are read as they are, and the first event a resumed driver records converts them once: their
records become the log's first lines (written atomically), and the old file is left untouched, no longer read.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from study.phases.suggestion import Suggestion
from study.contract import FAILURE_KEYS, REPORTED_METRICS, trial_status
from study.stats.scaling import curve_statistics
from trainables.files import write_text_atomic

LOG_NAME = "trials_{phase}.jsonl"
LEGACY_NAMES = ("trials_{phase}.json", "mlflow_runs_{phase}.json")  # the rewritten JSON dicts of earlier drivers


def nimg_step(kimg: float) -> int:
    """Steps are integers: the kimg axis in images (kimg x 1000)."""
    return int(round(kimg * 1000))


def records_file(output: Path, phase: str) -> Path:
    """The phase's ledger: its log, or in a folder written before the log, the JSON file that holds its records."""
    log = Path(output) / LOG_NAME.format(phase=phase)
    return log if log.exists() else next((path for path in _legacy_files(log) if path.exists()), log)


def load_records(output: Path, phase: str) -> dict[str, dict]:
    """The phase's records, keyed by Tune trial id; lost trials are not among them."""
    return _read(Path(output) / LOG_NAME.format(phase=phase))[0]


def _log_path(path: Path) -> Path:
    """The log of the ledger any of its names point to (the log itself, or a legacy JSON file of the phase)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return path
    stem = "trials_" + path.stem.removeprefix("mlflow_runs_") if path.stem.startswith("mlflow_runs_") else path.stem
    return path.with_name(f"{stem}.jsonl")


def _legacy_files(log: Path) -> list[Path]:
    files = [log.with_suffix(".json")]
    if log.stem.startswith("trials_"):
        files.append(log.with_name(f"mlflow_runs_{log.stem.removeprefix('trials_')}.json"))
    return files


def _read(log: Path) -> tuple[dict[str, dict], dict[str, dict], bool]:
    """The records, the lost ones, and whether they come from a legacy JSON file (not yet converted to the log)."""
    if log.exists():
        return *replay(log.read_text().splitlines()), False
    for legacy in _legacy_files(log):
        if legacy.exists():
            return json.loads(legacy.read_text()), {}, True
    return {}, {}, False


def replay(lines) -> tuple[dict[str, dict], dict[str, dict]]:
    """The records the log's lines build, and the lost ones; a line that does not parse (torn by a killed driver)
    is skipped."""
    records: dict[str, dict] = {}
    lost: dict[str, dict] = {}
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        _apply(records, lost, event)
    return records, lost


def _apply(records: dict[str, dict], lost: dict[str, dict], event: dict) -> None:
    """One event on the records: the same code builds them in memory and on reload, so both are alike."""
    if event["e"] == "open":
        records[event["id"]] = event["r"]
        return
    if event["e"] == "lost":
        if event["id"] in records:
            lost[event["id"]] = {**records.pop(event["id"]), "lost": event["why"]}
        return
    record = records.get(event["id"]) or lost.get(event["id"])
    if record is None:  # its open line was torn: the driver that wrote it died at once
        return
    if event["e"] == "point":
        record["last_step"] = event["s"]
        record["last_result"] = event["p"]
        record["history"].append(event["p"])
        if "f" in event and "first_step_at" not in record:
            record["first_step_at"] = event["f"]
    else:
        record.update(event["set"])


def _line(event: dict) -> str:
    return json.dumps(event, separators=(",", ":")) + "\n"


def _ends_torn(log) -> bool:
    """Whether the file (opened a+b) has a last line without its newline: a write cut short."""
    if log.seek(0, os.SEEK_END) == 0:
        return False
    log.seek(-1, os.SEEK_END)
    return log.read(1) != b"\n"


def run_name(suggestion: Suggestion, trial_id: str, phase: str) -> str:
    """The MLflow run name: cell, role, then the Optuna trial number of a searched trial or the seed of a seeded
    re-run, then the Tune trial id (unique), so a chart's legend says which arm each curve is:
    `n22-baseline-s1000-3936e74c`, `n22-search-t2-5a21d311`."""
    searched = phase == "search" and suggestion.optuna_trial is not None
    number = f"t{suggestion.optuna_trial}" if searched else f"s{suggestion.seed}"
    parts = [suggestion.cell, suggestion.role, number, trial_id]
    return "-".join(str(part) for part in parts if part)


def failure_reason(failure: dict) -> str:
    """One line for a trial's failure report: 'config error: ...', 'data error: ...', or the error itself."""
    kind, error = failure["error_kind"], failure.get("error", "")
    return error if kind in ("error", "diverged") else f"{kind} error: {error}"


class Ledger:
    """The records of one phase, keyed by Tune trial id. `path` may name the log or a legacy JSON file of the
    phase (what `records_file` returns); the ledger always appends to the log."""

    def __init__(self, path: Path):
        self.path = _log_path(path)
        self.records: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        self.records, self.lost, self._legacy = _read(self.path)
        self._check_tail = True  # the last line may be torn: the first append starts a new one if so

    def _record(self, event: dict, sync: bool = False) -> None:
        """Append the event to the log as one line, then apply it to the records."""
        if event["e"] != "open" and event["id"] not in self.records and event["id"] not in self.lost:
            raise KeyError(event["id"])
        line = _line(event)
        if self._legacy:
            self._convert()
        if self._check_tail:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as log:
            if self._check_tail and _ends_torn(log):
                line = "\n" + line
            self._check_tail = True  # until this write is known to be whole
            log.write(line.encode())
            log.flush()
            if sync:
                os.fsync(log.fileno())
        self._check_tail = False
        _apply(self.records, self.lost, event)

    def _convert(self) -> None:
        """The earlier driver's JSON dict becomes the log's first lines, once, before the first new event."""
        write_text_atomic(self.path, "".join(_line({"e": "open", "id": trial_id, "r": record})
                                             for trial_id, record in self.records.items()))
        self._legacy = False

    def open(self, trial_id: str, phase: str, suggestion: Suggestion, params: dict, tags: dict) -> dict:
        record = {"run_id": None, "run_name": run_name(suggestion, trial_id, phase), "tags": tags, "last_step": -1,
                  "phase": phase, "suggestion": suggestion.to_tune(), "params": params, "history": [],
                  "started": time.time()}
        self._record({"e": "open", "id": trial_id, "r": record})
        return record

    def add_point(self, trial_id: str, result: dict) -> int | None:
        """Record an eval point; returns its step, or None for one already recorded (a resumed trial re-reporting)."""
        record = self.records[trial_id]
        step = nimg_step(result.get("kimg", 0.0))
        if step <= record["last_step"]:
            return None
        event = {"e": "point", "id": trial_id, "s": step, "p": {k: result[k] for k in REPORTED_METRICS if k in result}}
        if "first_step_at" in result and "first_step_at" not in record:
            event["f"] = result["first_step_at"]
        self._record(event)
        return step

    def add_failure(self, trial_id: str, result: dict) -> None:
        """The trial's one failure report (trainables/failures.py): kept for its status, never an eval point."""
        failure = {k: result[k] for k in FAILURE_KEYS if k in result}
        self._record({"e": "failure", "id": trial_id, "set": {"failure": failure}})

    def finish(self, trial_id: str, errored: bool, reason: str, total_kimg: float, onset_threshold: float) -> dict:
        """Close the record: its status (contract.trial_status), reason and curve statistics."""
        record = self.records[trial_id]
        failure = record.get("failure", {})
        status = trial_status({**record.get("last_result", {"kimg": 0.0}), **failure}, errored, total_kimg)
        ending = {"status": status, "reason": (failure_reason(failure) if failure else reason)[:500],
                  "ended": time.time(), "curve": curve_statistics(record["history"], onset_threshold)}
        self._record({"e": "finish", "id": trial_id, "set": ending}, sync=True)
        return record

    def mark(self, trial_id: str, **fields) -> None:
        self._record({"e": "mark", "id": trial_id, "set": fields})

    def lose(self, trial_id: str, why: str) -> None:
        """The trial will never run under this id: its record leaves the phase's records for `lost` (fsync'd, as
        an end is)."""
        self._record({"e": "lost", "id": trial_id, "why": why}, sync=True)
