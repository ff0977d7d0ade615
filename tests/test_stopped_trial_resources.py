"""A multi-worker trial that Tune stops early leaves nothing behind (ray-project/ray#54305 reports Train V2
leaking the worker placement group when a Tune scheduler ends a trial).

Real Tune runs of 2-worker `TorchTrainer` trials, shaped as the study's trainable (a Tune function trial that
runs a TorchTrainer and reports through `TuneReportCallback`), on the session's cluster of three 1-CPU nodes: one
trial stopped by the study's per-cell ASHA, one stopped as decided by the design's scheduler. A leaked 2-CPU
placement group would leave one CPU, and the trial after it could never start: every trial must run, and
afterwards no placement group, Train worker or reserved CPU may be left. The workers report a loss and a
memorization value set per trial, so which trial is stopped does not depend on training noise.
"""

import sys
import time

import pytest
from ray import cloudpickle, tune
from ray.util.state import list_actors

from study.phases.confirm import FixedSearcher
from study.phases.schedulers import DecidedStopper, PerCellASHA
from study.phases.suggestion import Suggestion

REPORTS = 4


def _worker_loop(config: dict) -> None:
    import ray.train

    for step in range(1, REPORTS + 1):
        ray.train.report({"kimg": float(step), "test_loss": config["loss"], "memorization": config["memorization"]})


def _trial(suggestion: dict) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    overrides = Suggestion.from_tune(suggestion).overrides
    TorchTrainer(_worker_loop, train_loop_config=overrides,
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name=f"train-{tune.get_context().get_trial_id()}",
                                      storage_path=overrides["storage"], callbacks=[TuneReportCallback()])).fit()


def _suggestion(storage: str, loss: float, memorization: float) -> Suggestion:
    return Suggestion(cell="n10", regime_fraction=1.0, images=10,
                      overrides={"loss": loss, "memorization": memorization, "storage": storage})


def _leftovers(ray) -> dict:
    """What a stopped trial could leak: placement groups not removed, live Train workers, CPUs not given back."""
    from ray.util import placement_group_table

    groups = [g for g in placement_group_table().values() if g["state"] != "REMOVED"]
    workers = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "TrainWorker" in a.class_name]
    cpus = ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0)
    return {"placement_groups": len(groups), "train_workers": len(workers), "reserved_cpus": cpus}


def _released(ray, deadline_s: float = 120) -> dict:
    """Ray frees what a run held asynchronously: poll until nothing is held (an event), or return what is."""
    deadline = time.time() + deadline_s
    while (left := _leftovers(ray)) != {"placement_groups": 0, "train_workers": 0, "reserved_cpus": 0}:
        if time.time() > deadline:
            return left
        time.sleep(0.5)  # polling Ray's state, not waiting a fixed time
    return left


@pytest.mark.slow
@pytest.mark.parametrize("stopped_by", ["asha", "decided"])
def test_a_two_worker_trial_stopped_early_leaves_no_placement_group_worker_or_cpu(ray_session, tmp_path, stopped_by):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import the tests folder
    storage = str(tmp_path / "train")
    if stopped_by == "asha":  # the second trial is worse than the first at the first rung
        scheduler = PerCellASHA(time_attr="kimg", metric="test_loss", mode="min", max_t=REPORTS, grace_period=1,
                                reduction_factor=2)
        configs = [_suggestion(storage, 1.0, 0.0), _suggestion(storage, 5.0, 0.0), _suggestion(storage, 1.0, 0.0)]
    else:  # the first trial copies 95% at its first report: decided
        scheduler = DecidedStopper(saturation=0.9)
        configs = [_suggestion(storage, 1.0, 0.95), _suggestion(storage, 1.0, 0.0)]
    assert _released(ray_session) == {"placement_groups": 0, "train_workers": 0, "reserved_cpus": 0}
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"CPU": 0, "trial_driver": 1}),
        # time_budget_s only ends a run a leak would hang (its next trial then has no report): no timing is asserted
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=len(configs), max_concurrent_trials=1,
                                    search_alg=FixedSearcher(configs), time_budget_s=900),
        run_config=tune.RunConfig(name=f"leak-{stopped_by}", storage_path=str(tmp_path / "tune"), verbose=0),
    )
    results = tuner.fit()

    reports = [len(results[i].metrics_dataframe) for i in range(len(results))]
    stopped = 1 if stopped_by == "asha" else 0
    assert sorted(reports) == sorted([REPORTS] * (len(configs) - 1) + [1]), reports
    assert reports[stopped] == 1  # the trial meant to be stopped was, and every trial after it ran to the end
    assert _released(ray_session) == {"placement_groups": 0, "train_workers": 0, "reserved_cpus": 0}
