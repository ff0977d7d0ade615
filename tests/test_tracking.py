"""The MLflow trial callback through a tracking-server outage: nothing computed is lost, nothing is logged twice.

A real `mlflow server` is stopped and started again under the driver's callback, which sees real Tune `Trial`
objects (stubs: no trainable runs). Events are driven directly, so the outage falls exactly where the test says.
"""

import time

import pytest
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from study.tracking.callback import MlflowTrialCallback, TrialRules
from study.tracking.mlflow_runs import connect, start_parent_run
from study.tracking.run_writer import ParentRun
from study.tracking.ledger import load_records
from tests.conftest import TINY_TRIAL, free_port, mlflow_server
from trainables.config import load_trial_config

TOTAL_KIMG = 0.256


def _trial(trial_id: str) -> Trial:
    suggestion = {"regime": "r1", "regime_fraction": 1.0, "seed": 0, "role": "search", "overrides": {"score_augment.p": 0.3}}
    return Trial("scoreaug_trial", config=suggestion, trial_id=trial_id, stub=True)


def _result(kimg: float) -> dict:
    return {"kimg": kimg, "train_loss": 1.0 - kimg, "test_loss": 1.1 - kimg, "loss_gap": 0.1, "img_per_sec": 100.0}


class TrackingServer:
    """One server store and port: `up()` serves it, and outside that block the server is down (the outage).
    Holds the study's experiment and parent run, made while it is up."""

    def __init__(self, tmp_path, experiment: str):
        self.paths = (tmp_path / "server.db", tmp_path / "artifacts", free_port(), tmp_path / "server.log")
        self.state_file = tmp_path / "trials_search.json"
        with self.up() as self.url:
            client, self.experiment_id = connect(self.url, experiment, tmp_path / "unused")
            self.parent = start_parent_run(client, self.experiment_id, experiment, {}, None)

    def up(self):
        return mlflow_server(*self.paths)

    def callback(self) -> MlflowTrialCallback:
        base = load_trial_config(None, TINY_TRIAL).model_dump()
        return MlflowTrialCallback(ParentRun(self.url, self.experiment_id, self.parent), self.state_file, "search",
                                   TrialRules(TOTAL_KIMG, 0.1, base), self.state_file.parent / "samples")


def _check_run(client: MlflowClient, run_id: str, steps: list[int]) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert run.data.params["score_augment.p"] == "0.3"
    for metric in ("train_loss", "test_loss", "loss_gap", "kimg"):
        assert [m.step for m in client.get_metric_history(run_id, metric)] == steps, metric  # none twice, none lost


@pytest.mark.slow
def test_trials_logged_through_a_tracking_outage_reach_mlflow_once_it_is_back(tmp_path):
    server = TrackingServer(tmp_path, "outage")
    with server.up():
        callback = server.callback()
        before = _trial("before_00000")  # starts while the server is up
        callback.on_trial_start(0, [], before)
        callback.on_trial_result(0, [], before, _result(0.128))
        assert not callback.queue.pending

    # The server is down: a result of a running trial, and a whole trial from start to end.
    stalled = time.monotonic()
    callback.on_trial_result(0, [], before, _result(0.256))
    during = _trial("during_00001")
    callback.on_trial_start(0, [], during)
    callback.on_trial_result(0, [], during, _result(0.128))
    callback.on_trial_result(0, [], during, _result(0.256))
    callback.on_trial_complete(0, [], during)
    stalled = time.monotonic() - stalled
    assert stalled < 60, f"the outage held the driver for {stalled:.0f} s"  # MLflow's default retries: minutes
    assert callback.queue.pending and callback.queue.failed_calls >= 1
    records = load_records(server.state_file.parent, "search")
    assert records["during_00001"]["run_id"] is None  # not created yet, but every metric is on disk
    assert [p["kimg"] for p in records["during_00001"]["history"]] == [0.128, 0.256]

    with server.up() as url:  # back, same store and port
        callback.on_trial_complete(0, [], before)  # the next event flushes the queue in order, then logs its own
        assert not callback.queue.pending
        records = load_records(server.state_file.parent, "search")
        client = MlflowClient(tracking_uri=url)
        children = client.search_runs([server.experiment_id], "tags.phase = 'search'")
        assert sorted(r.data.tags["trial_id"] for r in children) == ["before_00000", "during_00001"]
        for trial_id in ("before_00000", "during_00001"):
            _check_run(client, records[trial_id]["run_id"], [128, 256])
            assert client.get_run(records[trial_id]["run_id"]).data.tags["mlflow.parentRunId"] == server.parent


@pytest.mark.slow
def test_a_run_the_driver_could_not_create_is_replayed_by_the_next_driver(tmp_path, caplog):
    """The outage outlasts the phase: the driver warns and stops; the next driver (`--resume`) creates the run
    and logs everything its records file kept."""
    server = TrackingServer(tmp_path, "replay")
    callback = server.callback()
    lost = _trial("lost_00000")
    callback.on_trial_start(0, [], lost)
    callback.on_trial_result(0, [], lost, _result(0.128))
    callback.on_trial_result(0, [], lost, _result(0.256))
    callback.on_trial_complete(0, [], lost)
    callback.on_experiment_end([])
    assert "tracking calls for 1 trial run(s) of the search phase are not made" in caplog.text

    with server.up() as url:
        resumed = server.callback()
        resumed.on_experiment_end([])
        assert not resumed.queue.pending
        run_id = load_records(server.state_file.parent, "search")["lost_00000"]["run_id"]
        client = MlflowClient(tracking_uri=url)
        _check_run(client, run_id, [128, 256])
        assert len(client.search_runs([server.experiment_id], "tags.trial_id = 'lost_00000'")) == 1
