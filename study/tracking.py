"""MLflow tracking as DESIGN.md lays it out: one experiment per study, a parent run, one child run per trial.

All trial logging happens in the driver, in a Tune callback: code after `trainer.fit()` never runs
for a trial that Tune stops early, but callbacks always do. Calls that fail (a tracking outage),
run creation included, are queued in order, retried on the next event and at the end of each phase,
and counted, never silently dropped; every metric is also kept in the phase's records file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from study.scaling import curve_statistics
from study.status import FAILED, FAILURE_KEYS, MLFLOW_STATUS, trial_status
from trainables.config import flatten

CONTRACT_METRICS = ("kimg", "train_loss", "test_loss", "loss_gap", "fid", "fid_test", "leakage", "memorization", "img_per_sec")
SUMMARY_METRICS = ("fid_floor", "eval_seconds")
# Per-trial statistics of the whole curve, logged once when the trial ends (study/scaling.py computes them).
CURVE_METRICS = ("memorization_max", "memorization_onset_kimg", "best_fid", "best_fid_kimg", "best_fid_test",
                 "best_fid_test_kimg", "test_loss_min_kimg")


class TrackingError(RuntimeError):
    """The tracking server cannot be reached at study start."""


def records_file(output: Path, phase: str) -> Path:
    """Where the driver keeps one record per trial of a phase (run id, status, metric history)."""
    return output / f"mlflow_runs_{phase}.json"


def load_records(output: Path, phase: str) -> dict[str, dict]:
    path = records_file(output, phase)
    return json.loads(path.read_text()) if path.exists() else {}


def nimg_step(kimg: float) -> int:
    """MLflow steps are integers: the kimg axis in images (kimg x 1000)."""
    return int(round(kimg * 1000))


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


def _metrics(values: dict, step: int, names: tuple[str, ...] = CONTRACT_METRICS + SUMMARY_METRICS) -> list[Metric]:
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


class MlflowTrialCallback(Callback):
    """Creates, fills and closes one child run per Tune trial; reuses runs across `--resume`."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, state_file: Path, phase: str,
                 total_kimg: float, base_trial: dict, onset_threshold: float, samples_dir: Path):
        self.uri = uri
        self.onset_threshold = onset_threshold
        self.samples_dir = Path(samples_dir)  # sample grids are kept here, beside the records, and logged from here
        self.base_trial = base_trial
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.state_file = Path(state_file)
        self.phase = phase
        self.total_kimg = total_kimg
        self.runs: dict[str, dict] = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.pending: list[tuple[str, str, tuple]] = []  # (trial id, client method, args), oldest first
        self.failed_calls = 0
        self._client = None
        self.logged_steps: dict[str, set[int]] = {}  # per trial, the eval points MLflow already holds (on resume)
        self._replay_records()

    def _replay_records(self) -> None:
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
            self.pending.append((trial_id, "find_or_create_run", ()))
        if not params_logged:  # logging a param again with the same value is allowed: no harm if some made it
            for batch in _param_batches(record["params"]):
                self.pending.append((trial_id, "log_batch", ([], batch, [])))
        self.logged_steps[trial_id] = logged | {nimg_step(p.get("kimg", 0.0)) for p in record["history"]}
        for point in record["history"]:
            step = nimg_step(point.get("kimg", 0.0))
            if step not in logged:
                self.pending.append((trial_id, "log_batch", (_metrics(point, step), [], [])))
        if record.get("status") and not terminated:
            self.pending.append((trial_id, "log_batch", self._closing_batch(record)))
            self.pending.append((trial_id, "set_terminated", (self._run_status(record["status"]),)))

    def _logged(self, record: dict) -> tuple[set[int], bool, bool]:
        """What MLflow holds of the record's run: its kimg steps, whether it is closed, whether all params are
        there. For a run not yet made (or made by a driver killed before it saved the id), nothing."""
        if record.get("run_id") is None:
            return set(), False, False
        try:
            steps = {m.step for m in self.client.get_metric_history(record["run_id"], "kimg")}
            run = self.client.get_run(record["run_id"])
            return steps, run.info.status != "RUNNING", len(run.data.params) >= len(record["params"])
        except Exception as err:  # guessing would either lose points or log them twice
            raise TrackingError(f"MLflow at {self.uri} did not answer while the study resumed ({str(err).splitlines()[0][:200]}); "
                                "run --resume again once it is reachable: every metric is kept in the records file") from None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def __setstate__(self, state):
        """Tune pickles callbacks with its experiment state and restores those on `--resume`, not the new ones:
        the records on disk are the truth, and what MLflow lacks of them is replayed (the pickled queue is stale)."""
        self.__dict__.update(state)
        if self.state_file.exists():
            self.runs = json.loads(self.state_file.read_text())
        self.pending, self.logged_steps = [], {}
        self._replay_records()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _save_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.runs, indent=1))
        tmp.replace(self.state_file)

    def _call(self, trial_id: str, name: str, *args) -> bool:
        """Make one client call for a trial's run, or queue it behind earlier failures, in order."""
        self._flush()
        if self.pending:
            self.pending.append((trial_id, name, args))
            return False
        if self._try(trial_id, name, args):
            return True
        self.failed_calls += 1
        self.pending.append((trial_id, name, args))
        return False

    def _try(self, trial_id: str, name: str, args: tuple) -> bool:
        record = self.runs[trial_id]
        try:
            if name in ("create_run", "find_or_create_run"):
                # A killed driver may have made the run and died before saving its id: find it by its tags first.
                found = self.client.search_runs([self.experiment_id], f"tags.trial_id = '{record['tags']['trial_id']}' and "
                                                f"tags.phase = '{self.phase}'") if name == "find_or_create_run" else []
                found = [r for r in found if r.data.tags.get("mlflow.parentRunId") == self.parent_run_id]
                run = found[0] if found else self.client.create_run(self.experiment_id, run_name=record["run_name"],
                                                                    tags=record["tags"])
                record["run_id"] = run.info.run_id
                self._save_state()
            else:
                getattr(self.client, name)(record["run_id"], *args)
                if name == "set_terminated":  # everything of this run is in MLflow: a resumed driver skips it
                    record["closed"] = True
                    self._save_state()
            return True
        except Exception:
            return False

    def _flush(self) -> None:
        while self.pending and self._try(*self.pending[0]):
            self.pending.pop(0)

    def run_for(self, trial) -> dict:
        """The trial's record; on first sight, its MLflow run is created (or queued, during an outage) with its params."""
        record = self.runs.get(trial.trial_id)
        if record:
            return record
        suggestion = trial.config
        from study.trial import trial_config

        params = flatten(trial_config(self.base_trial, suggestion))
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "regime": suggestion["regime"],
            "images": str(suggestion.get("images", "")),  # the regime's training-set size
            "capacity": suggestion.get("capacity", ""),
            "trial_id": trial.trial_id,
            "searcher": {"search": "optuna-tpe", "confirm": "confirmation"}.get(self.phase, self.phase),
            "phase": self.phase,
            "role": suggestion.get("role", ""),
            "optuna_trial": str(suggestion.get("optuna_trial", "")),
        }
        record = self.runs[trial.trial_id] = {
            "run_id": None, "run_name": f"{suggestion['regime']}-{trial.trial_id}", "tags": tags, "last_step": -1,
            "phase": self.phase, "suggestion": suggestion, "params": params, "history": [], "started": time.time()}
        self._save_state()
        self._call(trial.trial_id, "create_run")
        for batch in _param_batches(params):
            self._call(trial.trial_id, "log_batch", [], batch, [])
        return record

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = self.run_for(trial)
        if "error_kind" in result:  # the trial's one failure report: recorded for its status, never an eval point
            record["failure"] = {k: result[k] for k in FAILURE_KEYS if k in result}
            self._save_state()
            return
        step = nimg_step(result.get("kimg", 0.0))
        if step <= record["last_step"]:
            return  # a resumed trial re-reporting an eval point already logged
        if step not in self.logged_steps.get(trial.trial_id, ()):  # logged by a driver killed before it saved it
            self._call(trial.trial_id, "log_batch", _metrics(result, step), [], [])
        checkpoint = _checkpoint_location(trial, result)
        if checkpoint:
            self._log_grid(trial.trial_id, *checkpoint, step)
        record["last_step"] = step
        record["last_result"] = {k: result[k] for k in (*CONTRACT_METRICS, *SUMMARY_METRICS) if k in result}
        if "first_step_at" in result and "first_step_at" not in record:
            record["first_step_at"] = result["first_step_at"]
        record["history"].append(record["last_result"])
        self._save_state()

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
            self._call(trial_id, "log_artifact", str(local), artifact_dir)

    def _finish(self, trial, failed: bool, reason: str = "") -> None:
        record = self.run_for(trial)
        failure = record.get("failure", {})
        status = trial_status({**record.get("last_result", {"kimg": 0.0}), **failure}, failed, self.total_kimg)
        if failure:
            kind, error = failure["error_kind"], failure.get("error", "")
            reason = error if kind in ("error", "diverged") else f"{kind} error: {error}"
        record.update(status=status, reason=reason[:500], ended=time.time(),
                      curve=curve_statistics(record["history"], self.onset_threshold))
        self._save_state()
        self._call(trial.trial_id, "log_batch", *self._closing_batch(record))
        self._call(trial.trial_id, "set_terminated", self._run_status(status))

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
        self._flush()
        if self.pending:
            runs = len({trial_id for trial_id, _, _ in self.pending})
            print(f"warning: MLflow at {self.uri} is unreachable: {len(self.pending)} tracking calls for {runs} trial "
                  f"run(s) of the {self.phase} phase are not made; their metrics are in {self.state_file}", flush=True)
