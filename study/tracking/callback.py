"""MLflow tracking as DESIGN.md lays it out: one experiment per study, a parent run, one child run per trial.

All trial logging happens in the driver, in a Tune callback: code after `trainer.fit()` never runs
for a trial that Tune stops early, but callbacks always do. Calls that fail (a tracking outage),
run creation included, are queued in order, retried on the next event and at the end of each phase,
and counted, never silently dropped; every metric is also kept in the phase's ledger (study/ledger.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from study.contract import CURVE_METRICS, FAILED, MLFLOW_STATUS, REPORTED_METRICS
from study.phases.suggestion import Suggestion
from study.tracking.ledger import Ledger, nimg_step
from trainables.config_io import ConfigError, flatten



class TrackingError(RuntimeError):
    """The tracking server cannot be reached at study start."""


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """One TCP connection to an http(s) tracking server: MLflow's own client retries a refused connection with
    backoff for minutes before it gives up, so a dead server is found here, in seconds."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise TrackingError(f"MLflow tracking at {uri} is unreachable ({reason}); start the server or point "
                            "tracking.uri at a running one") from None


# MLflow's HTTP client retries a failed call 7 times with exponential backoff and waits up to 120 s per
# attempt: minutes in which the driver, and with it Tune's event loop, would stand still during an outage.
# The callback queues what fails and retries it on the next event, so one short attempt is enough.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def connect(uri: str, experiment: str, artifact_root: Path) -> tuple[MlflowClient, str]:
    """Client and experiment id; an unreachable server fails here, before any trial starts."""
    _check_reachable(uri)
    if uri.startswith("http"):
        for name, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(name, value)  # a user's own setting wins
    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        location = artifact_root.as_uri() if "://" not in str(artifact_root) else str(artifact_root)
        if uri.startswith("http"):
            location = None  # the server decides (its --artifacts-destination)
        return client, client.create_experiment(experiment, artifact_location=location)
    except Exception as err:
        raise TrackingError(f"MLflow tracking at {uri} is unreachable or refused the experiment: {str(err).splitlines()[0][:200]}") from None


def start_parent_run(client: MlflowClient, experiment_id: str, study_name: str, tags: dict, run_id: str | None) -> str:
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(experiment_id, run_name=study_name, tags={"study": study_name, **tags})
    return run.info.run_id


def log_parent_metrics(client: MlflowClient, run_id: str, values: dict[str, float]) -> None:
    """The study's headline statistics (N50, EMM, data multiplier, ...) on its parent run, in one batch per 500."""
    now = int(time.time() * 1000)
    metrics = [Metric(name, float(value), now, 0) for name, value in sorted(values.items())]
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start : start + 500])


def _param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def _metrics(values: dict, step: int, names: tuple[str, ...] = REPORTED_METRICS) -> list[Metric]:
    """The named metrics among a trial's values (by default the contract's, reported at eval points), at one kimg step."""
    now = int(time.time() * 1000)
    return [Metric(k, float(values[k]), now, step) for k in names if isinstance(values.get(k), (int, float))]


def _param_batches(params: dict) -> list[list[Param]]:
    """A trial's flattened config as MLflow params, in batches under the server's 100-per-call limit."""
    items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
    return [items[start : start + 90] for start in range(0, len(items), 90)]


def _checkpoint_location(trial, result: dict):
    """(filesystem, path) of the checkpoint saved with this result, if any. A Ray Train worker group passes its
    path (a local path or a URI); a trial training in its own process reports to Tune, which names the
    checkpoint's folder inside the trial's storage."""
    import pyarrow.fs as pafs

    if result.get("checkpoint_path"):
        path = result["checkpoint_path"]
        return pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    if result.get("checkpoint_dir_name") and getattr(trial, "storage", None) is not None:
        return trial.storage.storage_filesystem, f"{trial.storage.trial_fs_path}/{result['checkpoint_dir_name']}"
    return None


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What an outage raises: MLflow's own errors (the server answered 5xx, or the client gave up), and the
    connection errors beneath. Anything else is a bug and propagates."""
    import requests
    from mlflow.exceptions import MlflowException

    return MlflowException, requests.exceptions.RequestException, OSError


class CallQueue:
    """Client calls in order, one per trial event; what fails during an outage waits, in order, for the next try."""

    def __init__(self, attempt):
        self.attempt = attempt  # (key, method name, args) -> None; raises on failure
        self.pending: list[tuple[str, str, tuple]] = []
        self.failed_calls = 0

    def call(self, key: str, name: str, *args) -> None:
        """Make the call now, or queue it behind earlier failures (so a run's calls keep their order)."""
        self.flush()
        if self.pending:
            self.pending.append((key, name, args))
        elif not self._try(key, name, args):
            self.failed_calls += 1
            self.pending.append((key, name, args))

    def queue(self, key: str, name: str, *args) -> None:
        self.pending.append((key, name, args))

    def flush(self) -> None:
        while self.pending and self._try(*self.pending[0]):
            self.pending.pop(0)

    def _try(self, key: str, name: str, args: tuple) -> bool:
        try:
            self.attempt(key, name, args)
            return True
        except _transient_errors():
            return False


class MlflowTrialCallback(Callback):
    """Creates, fills and closes one child run per Tune trial, from the ledger it keeps; reuses runs across `--resume`."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, state_file: Path, phase: str,
                 total_kimg: float, base_trial: dict, onset_threshold: float, samples_dir: Path):
        self.uri = uri
        self.onset_threshold = onset_threshold
        self.samples_dir = Path(samples_dir)  # sample grids are kept here, beside the ledger, and logged from here
        self.base_trial = base_trial
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.ledger = Ledger(state_file)
        self.phase = phase
        self.total_kimg = total_kimg
        self._client = None
        self._start_queue()

    @property
    def state_file(self) -> Path:
        return self.ledger.path

    @property
    def runs(self) -> dict[str, dict]:
        return self.ledger.records

    @property
    def pending(self) -> list:
        return self.queue.pending

    @property
    def failed_calls(self) -> int:
        return self.queue.failed_calls

    def _start_queue(self) -> None:
        """A fresh queue, filled with what the ledger holds and MLflow lacks (nothing, for a new phase)."""
        self.queue = CallQueue(self._attempt)
        self.logged_steps: dict[str, set[int]] = {}  # per trial, the eval points MLflow already holds (on resume)
        for trial_id, record in self.runs.items():
            self._queue_replay(trial_id, record)

    def _queue_replay(self, trial_id: str, record: dict) -> None:
        """What an earlier driver recorded but MLflow lacks, because the server was down until that driver stopped
        or was killed: the run itself (found, if it was made, else created), its params, the eval points MLflow
        does not hold and the final status. Nothing MLflow holds is logged again."""
        if record.get("closed"):
            return
        logged, terminated, params_logged = self._logged(record)
        if record.get("run_id") is None:
            self.queue.queue(trial_id, "find_or_create_run")
        if not params_logged:  # logging a param again with the same value is allowed: no harm if some made it
            for batch in _param_batches(record["params"]):
                self.queue.queue(trial_id, "log_batch", [], batch, [])
        self.logged_steps[trial_id] = logged | {nimg_step(p.get("kimg", 0.0)) for p in record["history"]}
        for point in record["history"]:
            step = nimg_step(point.get("kimg", 0.0))
            if step not in logged:
                self.queue.queue(trial_id, "log_batch", _metrics(point, step), [], [])
        if record.get("status") and not terminated:
            self.queue.queue(trial_id, "log_batch", *self._closing_batch(record))
            self.queue.queue(trial_id, "set_terminated", self._run_status(record["status"]))

    def _logged(self, record: dict) -> tuple[set[int], bool, bool]:
        """What MLflow holds of the record's run: its kimg steps, whether it is closed, whether all params are
        there. For a run not yet made (or made by a driver killed before it saved the id), nothing."""
        if record.get("run_id") is None:
            return set(), False, False
        try:
            steps = {m.step for m in self.client.get_metric_history(record["run_id"], "kimg")}
            run = self.client.get_run(record["run_id"])
            return steps, run.info.status != "RUNNING", len(run.data.params) >= len(record["params"])
        except _transient_errors() as err:  # guessing would either lose points or log them twice
            raise TrackingError(f"MLflow at {self.uri} did not answer while the study resumed ({str(err).splitlines()[0][:200]}); "
                                "run --resume again once it is reachable: every metric is kept in the ledger") from None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def __setstate__(self, state):
        """Tune pickles callbacks with its experiment state and restores those on `--resume`, not the new ones:
        the ledger on disk is the truth, and what MLflow lacks of it is replayed (the pickled queue is stale)."""
        self.__dict__.update(state)
        self.ledger.reload()
        self._start_queue()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _attempt(self, trial_id: str, name: str, args: tuple) -> None:
        record = self.runs[trial_id]
        if name in ("create_run", "find_or_create_run"):
            # A killed driver may have made the run and died before saving its id: find it by its tags first.
            found = self.client.search_runs([self.experiment_id], f"tags.trial_id = '{record['tags']['trial_id']}' and "
                                            f"tags.phase = '{self.phase}'") if name == "find_or_create_run" else []
            found = [r for r in found if r.data.tags.get("mlflow.parentRunId") == self.parent_run_id]
            run = found[0] if found else self.client.create_run(self.experiment_id, run_name=record["run_name"],
                                                                tags=record["tags"])
            self.ledger.mark(trial_id, run_id=run.info.run_id)
            return
        getattr(self.client, name)(record["run_id"], *args)
        if name == "set_terminated":  # everything of this run is in MLflow: a resumed driver skips it
            self.ledger.mark(trial_id, closed=True)

    def run_for(self, trial) -> dict:
        """The trial's record; on first sight, its MLflow run is created (or queued, during an outage) with its params."""
        record = self.runs.get(trial.trial_id)
        if record:
            return record
        suggestion = Suggestion.from_tune(trial.config)
        try:
            params = flatten(suggestion.trial_config(self.base_trial))
        except ConfigError:  # the trial fails at once and says why; its params are what it was asked to run
            params = {**suggestion.fixed, **suggestion.overrides}
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "regime": suggestion.cell,
            "images": str(suggestion.images or ""),  # the regime's training-set size
            "capacity": suggestion.capacity,
            "trial_id": trial.trial_id,
            "searcher": {"search": "optuna-tpe", "confirm": "confirmation"}.get(self.phase, self.phase),
            "phase": self.phase,
            "role": suggestion.role,
            "optuna_trial": "" if suggestion.optuna_trial is None else str(suggestion.optuna_trial),
        }
        record = self.ledger.open(trial.trial_id, self.phase, suggestion, params, tags)
        self.queue.call(trial.trial_id, "create_run")
        for batch in _param_batches(params):
            self.queue.call(trial.trial_id, "log_batch", [], batch, [])
        return record

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.run_for(trial)
        if "error_kind" in result:
            self.ledger.add_failure(trial.trial_id, result)
            return
        step = self.ledger.add_point(trial.trial_id, result)
        if step is None:
            return
        if step not in self.logged_steps.get(trial.trial_id, ()):  # logged by a driver killed before it saved it
            self.queue.call(trial.trial_id, "log_batch", _metrics(result, step), [], [])
        checkpoint = _checkpoint_location(trial, result)
        if checkpoint:
            self._log_grid(trial.trial_id, *checkpoint, step)

    def _log_grid(self, trial_id: str, fs, path: str, step: int) -> None:
        """Copy the eval point's sample grid (and its samples-beside-nearest-training-image grid) out of the
        checkpoint, which Train may delete later, into the study's samples folder, and log them to the run."""
        from trainables.checkpoint import NEAREST_GRID, SAMPLE_GRID

        for name, artifact_dir in ((SAMPLE_GRID, "samples"), (NEAREST_GRID, "nearest")):
            try:
                with fs.open_input_stream(f"{path}/{name}") as stream:
                    data = stream.read()
            except (OSError, FileNotFoundError):
                continue
            local = self.samples_dir / trial_id / artifact_dir / f"kimg-{step:09d}.png"
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            self.queue.call(trial_id, "log_artifact", str(local), artifact_dir)

    def _finish(self, trial, failed: bool, reason: str = "") -> None:
        self.run_for(trial)
        record = self.ledger.finish(trial.trial_id, failed, reason, self.total_kimg, self.onset_threshold)
        self.queue.call(trial.trial_id, "log_batch", *self._closing_batch(record))
        self.queue.call(trial.trial_id, "set_terminated", self._run_status(record["status"]))

    @staticmethod
    def _closing_batch(record: dict) -> tuple[list[Metric], list, list[RunTag]]:
        """The trial's curve statistics (at its last step) and its status tags; an onset never reached is a tag,
        never a number."""
        reason = record.get("reason", "")
        tags = [RunTag("status", record["status"])] + ([RunTag("failure_reason", reason)] if reason else [])
        curve = record.get("curve", {})
        if curve.get("memorization_onset_censored"):
            tags.append(RunTag("memorization_onset", "not reached"))
        return _metrics(curve, max(record.get("last_step", 0), 0), CURVE_METRICS), [], tags

    @staticmethod
    def _run_status(status: str) -> str:
        return MLFLOW_STATUS.get(status, MLFLOW_STATUS[FAILED])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = getattr(trial, "error_file", None)
        reason = ""
        if error and Path(error).exists():
            reason = Path(error).read_text().strip().splitlines()[-1]
        self._finish(trial, failed=True, reason=reason or "trial raised an error")

    def on_experiment_end(self, trials, **info):
        self.queue.flush()
        if self.pending:
            runs = len({trial_id for trial_id, _, _ in self.pending})
            print(f"warning: MLflow at {self.uri} is unreachable: {len(self.pending)} tracking calls for {runs} trial "
                  f"run(s) of the {self.phase} phase are not made; their metrics are in {self.state_file}", flush=True)
