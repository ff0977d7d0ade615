"""Faults injected for real, outcomes read back from MLflow, Optuna storage and Parquet (docs/reliability.md).

Fast tests: an unwritable output folder and a dead tracking server (real `study/run.py` subprocesses), and
determinism (the worker loop twice in-process, the searcher twice). Slow tests (marked): a diverging trial
inside a real study, and a real Ray Train worker process killed by PID in the middle of a trial.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from study.config import load_study_config
from study.driver.runner import run_study
from study.faults import DIR_ENV, ENV
from tests.conftest import GRID_CONFIG, ROOT, TINY_TRIAL, free_port, mlflow_server

TIMING_KEYS = {"img_per_sec", "first_step_at", "sample_eval_seconds", "eval_seconds"}


def _run_cli(*args, timeout=60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "study/run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _assert_one_error_line(result: subprocess.CompletedProcess, expected: str) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    return lines[0]


# Where a 1-worker trial trains, and the Ray actor class of the process that a kill must hit.
TRAINING_PROCESS = {
    "worker_group": ("resources.reuse_trial_process=false", "RayTrainWorker"),  # Ray Train restarts the group
    "trial_process": ("resources.reuse_trial_process=true", "ImplicitFunc"),  # Tune restarts the trial
}


# ---------------------------------------------------------------- unwritable output folder


@pytest.mark.parametrize("kind", ["under_a_file", "read_only_folder"])
def test_unwritable_output_is_one_error_line_before_anything_starts(tmp_path, kind):
    if kind == "under_a_file":  # fails for every user, root included
        (tmp_path / "a_file").write_text("not a folder")
        output = tmp_path / "a_file" / "study"
    else:
        if os.geteuid() == 0:
            pytest.skip("running as root: mode 0o500 does not stop root from writing (the under_a_file case covers it)")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        output = locked / "study"
    try:
        result = _run_cli("--set", "name=unwritable", "--output", str(output))
    finally:
        if kind == "read_only_folder":
            (tmp_path / "locked").chmod(0o700)
    _assert_one_error_line(result, f"cannot write to output folder {output}")
    assert not output.exists()


# ---------------------------------------------------------------- tracking unreachable at start


def test_unreachable_tracking_fails_fast_before_ray_starts(tmp_path):
    """A tracking URI where nobody listens: one line, exit 2, well before MLflow's own retries (minutes) would end.
    `--address` names a dead Ray too: reaching Ray at all would fail differently (or hang past the timeout)."""
    output = tmp_path / "study"
    tracking = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = _run_cli("--set", "name=no-tracking", "--set", f"tracking.uri={tracking}", "--output", str(output),
                      "--address", f"127.0.0.1:{free_port()}", timeout=60)
    line = _assert_one_error_line(result, f"MLflow tracking at {tracking} is unreachable")
    assert "start the server" in line
    assert not (output / "study_state.json").exists() and not (output / "tune").exists()
    assert time.monotonic() - started < 60


# ---------------------------------------------------------------- determinism


def test_same_config_and_seed_give_identical_metrics_on_cpu(tmp_path):
    from trainables.config import load_trial_config
    from trainables.loop import run_trial
    from trainables.session import LocalSession

    def losses(folder, *extra):
        config = load_trial_config(None, TINY_TRIAL + ["score_augment.p=0.5", "seed=7", *extra])
        reports = run_trial(config, LocalSession(tmp_path / folder, device="cpu"), log=lambda _: None)
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in reports]

    first, second = losses("a"), losses("b")
    assert [r["kimg"] for r in first] == [0.128, 0.256]
    assert first == second  # exactly: same batches, noise, augmentations, initial weights and eval noise
    other_seed = losses("c", "seed=8")
    assert [r["train_loss"] for r in other_seed] != [r["train_loss"] for r in first]


def test_same_study_seed_gives_the_same_trial_configs(tmp_path):
    """The real RegimeSearcher (seeded TPE over Optuna RDB storage), twice: the same suggestions, past TPE's
    3 random start-up trials (trials 4 and 5 of each regime are TPE's), when it is told the same results."""
    from study.phases.cells import Cell
    from study.config import SearchConfig
    from study.phases.searcher import RegimeSearcher

    cells = [Cell("r0.5", 0.5, None, 719), Cell("r1", 1.0, None, 1438)]

    def suggestions(folder, seed):
        (tmp_path / folder).mkdir()
        search = SearchConfig(trials_per_regime=5, seed=seed, metric="test_loss")
        searcher = RegimeSearcher(cells, search, f"sqlite:///{tmp_path / folder / 'optuna.db'}", "det", 0.1, 0.256)
        out = []
        for number in range(10):
            suggestion = searcher.suggest(f"t{number}")
            out.append(suggestion)
            value = 1.0 + suggestion["overrides"]["score_augment.p"] - suggestion["overrides"]["model.dropout"]
            searcher.on_trial_complete(f"t{number}", {"kimg": 0.256, "test_loss": value})
        assert searcher.suggest("t-last") == searcher.FINISHED
        return out

    first, second = suggestions("a", 0), suggestions("b", 0)
    assert first == second
    assert sum(s["role"] == "baseline" for s in first) == 2
    assert len({json.dumps(s["overrides"], sort_keys=True) for s in first}) == 9  # two identical baselines
    other = suggestions("c", 1)
    assert [s["overrides"] for s in other] != [s["overrides"] for s in first]


# ---------------------------------------------------------------- divergence (slow)


def _diverging_space(trial) -> dict:
    """The `scoreaug` space plus a noise-level distribution centred at e^1000: sigma overflows to inf and the
    training loss is NaN at the first step. The baseline does not use the space, so it trains normally."""
    from search_spaces.spaces import scoreaug

    return {**scoreaug(trial), "diffusion.P_mean": 1000.0}


@pytest.mark.slow
def test_diverging_trial_stops_and_the_study_goes_on(ray_session, tmp_path, monkeypatch):
    from search_spaces import spaces

    monkeypatch.setitem(spaces.SPACES, "diverging", _diverging_space)
    output = tmp_path / "study"
    config = load_study_config(GRID_CONFIG, [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=diverging", f"output={output}", "regimes=[1.0]", "search.trials_per_regime=2", "search.space=diverging",
        "search.metric=test_loss", "scheduler.kind=none", "confirm.seeds=0", "resources.max_concurrent=2",
        "resources.max_failures=1",
    ])
    run_study(config, log=lambda *_: None)

    table = {r["role"]: r for r in pq.read_table(output / "results.parquet").to_pylist()}
    assert set(table) == {"baseline", "search"}
    diverged, baseline = table["search"], table["baseline"]
    assert diverged["status"] == "diverged" and "training loss is nan at kimg 0.000" in diverged["failure_reason"]
    assert diverged["kimg"] == 0.0 and diverged["test_loss"] is None  # stopped at once: no eval point after the NaN
    assert diverged["param.diffusion.P_mean"] == 1000.0
    assert baseline["status"] == "completed" and baseline["kimg"] == pytest.approx(0.256) and baseline["test_loss"] > 0

    trials = optuna.load_study(study_name="diverging-r1", storage=f"sqlite:///{output / 'optuna.db'}").trials
    states = {t.user_attrs.get("role", "search"): t.state for t in trials}
    assert states == {"baseline": optuna.trial.TrialState.COMPLETE, "search": optuna.trial.TrialState.FAIL}

    client = MlflowClient(tracking_uri=config.tracking_uri)
    run = client.get_run(diverged["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["status"] == "diverged"
    assert "training loss is nan" in run.data.tags["failure_reason"]
    assert client.get_metric_history(run.info.run_id, "kimg") == []  # its one failure report is not an eval point
    assert client.get_metric_history(run.info.run_id, "train_loss") == []
    done = client.get_run(baseline["mlflow_run_id"])
    assert done.info.status == "FINISHED" and done.data.tags["status"] == "completed"
    assert [m.step for m in client.get_metric_history(done.info.run_id, "test_loss")] == [128, 256]
    assert json.loads((output / "study_state.json").read_text())["phase"] == "done"


# ---------------------------------------------------------------- a Ray Train worker killed (slow)


def _live_actors(address: str, class_name: str) -> list:
    from ray.util.state import list_actors

    return list_actors(address=address, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])


def _records(output: Path) -> dict:
    """The driver's per-trial records of the search phase (rewritten atomically at every result)."""
    from study.tracking.ledger import load_records

    try:
        return load_records(output, "search")
    except (json.JSONDecodeError, OSError):
        return {}


def _all_tune_results(output: Path) -> list[dict]:
    """Every result the Tune driver has received (its result.json files, one per trial; complete lines only)."""
    results = []
    for path in sorted((output / "tune" / "search").glob("*/result.json")):
        results += [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
    return results


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(TRAINING_PROCESS))
def test_killed_worker_resumes_from_its_checkpoint_without_gap_or_duplicate(ray_session, tmp_path, mode):
    """SIGKILL to the process that trains a running trial (a real `study/run.py` on the session's cluster): a Ray
    Train worker (Ray Train restarts the worker group) or the Tune trial process that trains a 1-worker trial
    itself (Tune restarts the trial); either resumes from the last checkpoint, on one kimg axis."""
    setting, actor_class = TRAINING_PROCESS[mode]
    address = ray_session.get_runtime_context().gcs_address
    output = tmp_path / "study"
    every, total = 0.128, 1.536
    sets = [f"trial.{s}" for s in TINY_TRIAL] + [setting] + [
        "name=killed", f"output={output}", "regimes=[1.0]", "search.trials_per_regime=1", "search.metric=test_loss",
        "scheduler.kind=none", "confirm.seeds=0", f"trial.train.total_kimg={total}", f"trial.eval.every_kimg={every}",
        "resources.max_failures=1",
    ]
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "study/run.py", "--config", GRID_CONFIG, "--address", address, *sum((["--set", s] for s in sets), [])],
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_AUTH_MODE": "token"})
    try:
        # Kill once the driver has recorded two results of the trial: Tune registers a result's checkpoint only after
        # its callbacks (the ledger among them) have run, so the checkpoint known to be registered is the one before
        # the last result (an upload the controller has not yet taken in is lost with the worker); most of the
        # trial is still to run.
        deadline, victim, killed_trial = time.time() + 240, None, None
        while victim is None and driver.poll() is None and time.time() < deadline:
            records = _records(output)
            reported = [trial for trial, record in records.items() if len(record.get("history", [])) >= 2]
            if reported:
                reported_kimg = sorted(h["kimg"] for h in records[reported[0]]["history"])[-2]
                workers = _live_actors(address, actor_class)
                assert len(workers) == 1, workers  # the study's one trial: the live process that trains it
                victim, killed_trial = workers[0].pid, reported[0]
                os.kill(victim, signal.SIGKILL)
            else:
                time.sleep(0.1)
        assert victim is not None, log_path.read_text()[-3000:]
        assert driver.wait(timeout=300) == 0, log_path.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    [row] = pq.read_table(output / "results.parquet").to_pylist()
    assert row["trial_id"] == killed_trial and row["status"] == "completed", row
    assert row["kimg"] == pytest.approx(total) and row["test_loss"] > 0

    # Tune saw two worker processes for this trial: each marks its first report with `first_step_at`.
    results = [r for r in _all_tune_results(output) if r["trial_id"] == killed_trial]
    # Tune keeps a restarted worker group's results in one log; a restarted trial's log may start afresh from the
    # checkpoint it restores, in which case the second process's first report is all that is left to see.
    starts = [i for i, r in enumerate(results) if "first_step_at" in r]
    assert len(starts) == 2 or (mode == "trial_process" and len(starts) == 1), [(r["kimg"], "first_step_at" in r) for r in results]
    resumed_from = results[starts[-1]]["kimg"] - every
    assert resumed_from > 0  # it restarted from a checkpoint, not from scratch
    assert resumed_from > reported_kimg - every + 1e-9  # the restart lost at most one eval interval
    if len(starts) == 2:
        before = max(r["kimg"] for r in results[: starts[1]])
        assert before - every + 1e-9 < resumed_from <= before + 1e-9

    # The driver's records and MLflow: one continuous kimg axis, no gap, no duplicate.
    axis = [round(every * k * 1000) for k in range(1, round(total / every) + 1)]
    record = _records(output)[killed_trial]
    assert [round(h["kimg"] * 1000) for h in record["history"]] == axis
    client = MlflowClient(tracking_uri=f"sqlite:///{output / 'mlflow.db'}")
    for metric in ("kimg", "train_loss", "test_loss"):
        assert [m.step for m in client.get_metric_history(row["mlflow_run_id"], metric)] == axis, metric
    assert client.get_run(row["mlflow_run_id"]).data.tags["status"] == "completed"
    trials = optuna.load_study(study_name="killed-r1", storage=f"sqlite:///{output / 'optuna.db'}").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]
    assert victim not in [w.pid for w in _live_actors(address, actor_class)]



# ---------------------------------------------------------------- a start that fails before any trial runs


@pytest.mark.slow
def test_a_study_that_never_launched_a_trial_is_not_held(ray_session, tmp_path):
    """Ray is up but no node fits a worker: the study fails before its first trial, leaves no study_state.json
    behind (the same command simply starts again, without --resume), and closes its parent run as FAILED."""
    from study.driver.plan import PlanError

    address = ray_session.get_runtime_context().gcs_address
    config = load_study_config(GRID_CONFIG, [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=unfit", f"output={tmp_path / 'study'}", "regimes=[1.0]", "search.metric=test_loss",
        "search.max_memorization=null", "resources.cpus_per_worker=64"])
    for _ in range(2):  # the second attempt fails the same way, not with "already holds study"
        with pytest.raises(PlanError, match="no node fits one worker"):
            run_study(config, address=address, log=lambda *_: None)
        assert not (tmp_path / "study" / "study_state.json").exists()
    client = MlflowClient(tracking_uri=config.tracking_uri)
    parents = client.search_runs([client.get_experiment_by_name("unfit").experiment_id])
    assert [r.info.status for r in parents] == ["FAILED", "FAILED"]


# ---------------------------------------------------------------- a foreign Ray cluster on this machine


@pytest.mark.slow
def test_without_address_a_study_starts_its_own_ray_beside_a_running_cluster(tmp_path):
    """`ray start --head` (a user's own cluster) is running: `python study/run.py` with no --address starts a
    private local Ray (address="local") instead of joining it, and finishes; the foreign cluster is untouched."""
    ray_bin = Path(sys.executable).with_name("ray")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    foreign = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                                "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
                               stdout=(tmp_path / "foreign.log").open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True, env=env)
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in (tmp_path / "foreign.log").read_text():
            assert foreign.poll() is None and time.time() < deadline, (tmp_path / "foreign.log").read_text()[-2000:]
            time.sleep(0.2)  # polling the foreign head's log until it is up, not a fixed wait
        output = tmp_path / "study"
        sets = [f"trial.{s}" for s in TINY_TRIAL] + [
            "name=beside", "regimes=[1.0]", "search.trials_per_regime=1", "search.metric=test_loss",
            "search.max_memorization=null", "scheduler.kind=none", "confirm.seeds=0", "resources.num_cpus=1"]
        result = subprocess.run([sys.executable, "study/run.py", "--config", GRID_CONFIG, "--output", str(output), *sum((["--set", s] for s in sets), [])],
                                cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "starting a local Ray with 1 CPUs (a Ray cluster already running here is not joined" in result.stdout
        assert result.stdout.strip().splitlines()[-1] == "all 1 trials ran"
        assert foreign.poll() is None  # still up, and it ran nothing of ours
        status = subprocess.run([str(ray_bin), "list", "jobs", f"--address=http://127.0.0.1:{port}"], capture_output=True,
                                text=True, timeout=60, env=env)
        assert "beside" not in status.stdout
    finally:
        os.killpg(foreign.pid, signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
        try:
            foreign.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(foreign.pid, signal.SIGKILL)
            foreign.wait()


# ---------------------------------------------------------------- the driver killed during a tracking outage


@pytest.mark.slow
def test_driver_killed_during_a_tracking_outage_then_resumed_leaves_mlflow_complete(ray_session, tmp_path):
    """A real study tracks to a real `mlflow server`. The server goes down mid-trial, the driver queues its calls
    and is then SIGKILLed (no handler runs). The server comes back and `--resume` finishes the study: every run,
    param and kimg step is in MLflow once, as in an uninterrupted run."""
    address = ray_session.get_runtime_context().gcs_address
    backend, artifacts, port = tmp_path / "server.db", tmp_path / "artifacts", free_port()
    url = f"http://127.0.0.1:{port}"
    output = tmp_path / "study"
    every, total = 0.128, 1.536
    sets = [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=killed-driver", f"tracking.uri={url}", "regimes=[1.0]", "search.trials_per_regime=2",
        "search.metric=test_loss", "search.max_memorization=null", "scheduler.kind=none", "confirm.seeds=0",
        f"trial.train.total_kimg={total}", f"trial.eval.every_kimg={every}", "resources.max_concurrent=2"]
    command = [sys.executable, "study/run.py", "--config", GRID_CONFIG, "--address", address, "--output", str(output), *sum((["--set", s] for s in sets), [])]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}

    # The driver holds at its 2nd eval point until the server is down, then is SIGKILLed at its 5th: 3 points are
    # queued during the outage whatever the machine's speed (fault points, study/faults.py: events, not timing).
    env[ENV] = "result_recorded:HOLD:2,result_recorded:SIGKILL:5"
    env[DIR_ENV] = str(tmp_path)
    with mlflow_server(backend, artifacts, port, tmp_path / "server.log"):
        driver = subprocess.Popen(command, cwd=ROOT, stdout=(tmp_path / "first.log").open("w"), stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 600
            while not (tmp_path / "held-result_recorded-2").exists():
                assert driver.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
                time.sleep(0.1)  # polling for the driver's marker file, not waiting a fixed time
        except BaseException:
            driver.kill()
            raise
    # The server is down (its process group stopped): the driver goes on, queues what it cannot log, then dies.
    (tmp_path / "go-result_recorded-2").touch()
    try:
        assert driver.wait(timeout=600) == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
        assert sum(len(r.get("history", [])) for r in _records(output).values()) == 5
    finally:
        driver.kill()
        driver.wait()

    with mlflow_server(backend, artifacts, port, tmp_path / "server.log"):
        unfaulted = {k: v for k, v in env.items() if k not in (ENV, DIR_ENV)}
        resumed = subprocess.run(command + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=400, env=unfaulted)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("killed-driver").experiment_id
        children = client.search_runs([experiment], "tags.phase = 'search'")
        records = {**_records(output)}
        rows = pq.read_table(output / "results.parquet").to_pylist()
        assert sorted(r["status"] for r in rows) == ["completed", "completed"], rows
        # One run per trial that ran; none twice.
        assert sorted(r.data.tags["trial_id"] for r in children) == sorted(r["trial_id"] for r in rows)
        axis = [round(every * k * 1000) for k in range(1, round(total / every) + 1)]
        for run in children:
            assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
            assert run.data.params["train.total_kimg"] == str(total) and "seed" in run.data.params
            for metric in ("kimg", "train_loss", "test_loss"):
                assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == axis, (metric, run.data.tags)
            assert records[run.data.tags["trial_id"]]["run_id"] == run.info.run_id
