"""A real study end to end: Ray Tune + Optuna + Ray Train + MLflow, read back through each one's own client."""

import json

import optuna
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from study.config import load_study_config
from study.run import main as run_cli
from study.report.results import main as report_main
from study.driver.runner import run_study
from study.tracking.ledger import load_records
from tests.conftest import GRID_CONFIG, TINY_TRIAL

pytestmark = pytest.mark.slow


def _ddp_worker(config: dict) -> None:
    """Two gloo ranks: a check that DDP keeps the replicas identical, then a real trial."""
    import torch.distributed as dist

    from trainables.config import TrialConfig
    from trainables.loop import run_trial
    from trainables.loss import AUG_DIM, ScoreAugLoss
    from trainables.networks import build_denoiser
    from trainables.session import RayTrainSession

    session = RayTrainSession()
    trial = TrialConfig.model_validate(config["trial"])
    torch.manual_seed(0)
    net = session.prepare(build_denoiser(8, 1, AUG_DIM, **trial.resolved_model()))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = ScoreAugLoss.from_configs(trial.score_augment, trial.clean_augment, trial.diffusion)
    generator = torch.Generator().manual_seed(session.rank)  # each rank its own batch and noise
    for _ in range(3):
        loss = loss_fn(net, torch.rand(8, 1, 8, 8, generator=generator) * 2 - 1, generator).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(session.world_size)]
    dist.all_gather(gathered, flat)
    identical = all(torch.equal(gathered[0], g) for g in gathered)
    if session.rank == 0:  # Train V2 keeps only checkpointed reports, so the verdict goes to a file
        with open(config["verdict"], "w") as handle:
            json.dump({"replicas_identical": identical, "world_size": session.world_size}, handle)
    run_trial(trial, session, log=lambda _: None)


def test_two_worker_gloo_ddp_trains_with_identical_replicas(ray_session, tmp_path):
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    import sys

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import the tests folder
    from trainables.config import load_trial_config

    verdict = tmp_path / "verdict.json"
    config = {"trial": load_trial_config(None, TINY_TRIAL + ["score_augment.p=0.5"]).model_dump(), "verdict": str(verdict)}
    trainer = TorchTrainer(_ddp_worker, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name="ddp", storage_path=str(tmp_path)))
    result = trainer.fit()
    assert result.error is None
    assert json.loads(verdict.read_text()) == {"replicas_identical": True, "world_size": 2}
    assert result.metrics["kimg"] == 0.256 and result.metrics["train_loss"] > 0
    assert result.checkpoint is not None


def test_real_study_end_to_end(ray_session, tmp_path):
    overrides = [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=e2e", f"output={tmp_path / 'study'}", "regimes=[0.25,1.0]", "search.trials_per_regime=3",
        # One trial at a time: ASHA's decisions (who reached a rung first, against whom) and so the whole study are
        # deterministic, and the assertions below can be exact rather than "whatever happened".
        "trial.eval.fid=true", "scheduler.grace_kimg=0.128", "confirm.seeds=2", "resources.max_concurrent=1",
    ]
    config = load_study_config(GRID_CONFIG, overrides)
    output = run_study(config, log=lambda *_: None)

    table = pq.read_table(output / "results.parquet").to_pylist()
    search = [r for r in table if r["phase"] == "search"]
    confirm = [r for r in table if r["phase"] == "confirm"]
    assert len(search) == 6 and {r["regime"] for r in search} == {"r0.25", "r1"}
    assert sum(r["role"] == "baseline" for r in search) == 2
    assert len({r["trial_id"] for r in table}) == len(table)
    assert all(r["status"] in ("completed", "early_stopped") for r in table)
    assert {r["images_in_regime"] for r in search} == {360, 1438}
    for row in table:
        if row["status"] == "completed":
            assert row["kimg"] == pytest.approx(0.256) and row["test_loss"] > 0 and row["loss_gap"] is not None
            assert row["fid"] > 0 and row["fid_test"] > 0 and row["fid_floor"] > 0 and 0 <= row["leakage"] <= 1
    # Each regime with a completed ScoreAug trial confirms it and its baseline with 2 seeds; at least one has.
    confirmed = {r["regime"] for r in search if r["status"] == "completed" and r["role"] != "baseline"}
    assert confirmed and len(confirm) == 4 * len(confirmed) and all(r["status"] == "completed" for r in confirm)

    # Optuna: one study per regime, baseline first, no RUNNING leftovers, early-stopped trials recorded as PRUNED.
    storage = optuna.storages.RDBStorage(f"sqlite:///{output / 'optuna.db'}")
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["e2e-r0.25", "e2e-r1"]
    stopped = {r["trial_id"] for r in search if r["status"] == "early_stopped"}
    for name in names:
        trials = optuna.load_study(study_name=name, storage=storage).trials
        assert len(trials) == 3 and trials[0].user_attrs["role"] == "baseline" and trials[0].params["score_augment.p"] == 0.0
        assert all(t.state.is_finished() for t in trials)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for n in names for t in optuna.load_study(study_name=n, storage=storage).trials)
    assert pruned == len(stopped)

    # MLflow: a parent run with one nested child per trial, contract metrics stepped by kimg, sample grids.
    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == len(table)
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    child = next(c for c in children if c.info.run_id == next(r["mlflow_run_id"] for r in table if r["status"] == "completed"))
    for metric in ("train_loss", "test_loss", "loss_gap", "kimg", "img_per_sec"):
        steps = [m.step for m in client.get_metric_history(child.info.run_id, metric)]
        assert steps == [128, 256], metric
    assert [m.step for m in client.get_metric_history(child.info.run_id, "fid")] == [256]
    assert child.data.params["regime_fraction"] in ("0.25", "1.0") and "score_augment.p" in child.data.params
    assert child.data.tags["regime"] in ("r0.25", "r1") and child.data.tags["searcher"] in ("optuna-tpe", "confirmation")
    assert [a.path for a in client.list_artifacts(child.info.run_id, "samples")]
    parent_artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"results.parquet", "report", "study_config.yaml"} <= parent_artifacts
    assert (output / "report" / "summary.md").exists() and (output / "report" / "fid_vs_size.png").exists()
    assert "## Which searched parameters mattered" in (output / "report" / "summary.md").read_text()
    importances = json.loads((output / "report" / "importances.json").read_text())
    assert importances and set(importances) <= {"r0.25", "r1"}
    assert all(v and abs(sum(v.values()) - 1) < 1e-6 for v in importances.values())
    state = json.loads((output / "study_state.json").read_text())
    assert state["phase"] == "done" and state["parent_run_id"] == parents[0].info.run_id


def _tiny_study(output) -> list[str]:
    return [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=resumable", f"output={output}", "regimes=[0.5,1.0]", "search.trials_per_regime=2", "search.metric=test_loss",
        "scheduler.kind=none", "confirm.seeds=1", "trial.train.total_kimg=0.512", "resources.max_concurrent=2",
    ]


def _finished_trials(output) -> int:
    return sum("status" in r for r in load_records(output, "search").values())


def test_sigint_then_resume_finishes_without_duplicates(ray_session, tmp_path):
    """A real `study/run.py` on the session's cluster, interrupted after its first finished trial, then resumed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    output = tmp_path / "study"
    address = ray_session.get_runtime_context().gcs_address
    args = [sys.executable, "study/run.py", "--config", GRID_CONFIG, "--address", address] + sum((["--set", s] for s in _tiny_study(output)), [])
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_AUTH_MODE": "token"})
    deadline = time.time() + 300
    while _finished_trials(output) < 1 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.5)  # polling the driver's own records, not waiting a fixed time
    assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-2000:]
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=180) == 130, (tmp_path / "driver.log").read_text()[-2000:]
    assert json.loads((output / "study_state.json").read_text())["phase"] == "search"
    interrupted_children = load_records(output, "search")

    config = load_study_config(GRID_CONFIG, _tiny_study(output))
    run_study(config, resume=True, log=lambda *_: None)

    table = pq.read_table(output / "results.parquet").to_pylist()
    search = [r for r in table if r["phase"] == "search"]
    assert len(search) == 4 and len({r["trial_id"] for r in table}) == len(table)
    assert all(r["status"] == "completed" and r["kimg"] == pytest.approx(0.512) for r in table)
    for trial_id, record in interrupted_children.items():  # runs begun before the interrupt were reused, not duplicated
        assert next(r for r in search if r["trial_id"] == trial_id)["mlflow_run_id"] == record["run_id"]
    storage = optuna.storages.RDBStorage(f"sqlite:///{output / 'optuna.db'}")
    for regime in ("r0.5", "r1"):
        trials = optuna.load_study(study_name=f"resumable-{regime}", storage=storage).trials
        assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert sum(t.user_attrs.get("role") == "baseline" for t in trials) == 1
    client = MlflowClient(tracking_uri=config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("resumable").experiment_id], max_results=1000)
    assert sum("mlflow.parentRunId" not in r.data.tags for r in runs) == 1
    assert sum("mlflow.parentRunId" in r.data.tags for r in runs) == len(table)
    for row in table:
        steps = [m.step for m in client.get_metric_history(row["mlflow_run_id"], "kimg")]
        assert steps == [128, 256, 384, 512], steps  # one continuous kimg axis, no gap, no duplicate
    with pytest.raises(Exception, match="differs from the one"):
        run_study(load_study_config(GRID_CONFIG, _tiny_study(output) + ["search.trials_per_regime=3"]), resume=True)


def test_scaling_study_end_to_end(ray_session, tmp_path, capfd):
    """A tiny memorization scaling study: 2 training-set sizes, 2 arms (baseline, confirmed best ScoreAug) x 2 seeds,
    searched on two objectives under a memorization constraint, with sample metrics at log-spaced eval points.
    It runs through `study/run.py`'s entry point, whose terminal output is the study's own: no Tune box, no
    TensorBoard hint, no Optuna INFO line, and a headline of N50s and the data multiplier at the end."""
    overrides = [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=scaling", f"output={tmp_path / 'study'}", "regimes={images: [8, 32]}", "search.trials_per_regime=2",
        "search.objectives=[fid_test,memorization_max]", "search.max_memorization=0.9", "trial.eval.fid=true",
        "trial.eval.fid_at=every", "trial.eval.schedule=log", "trial.eval.every_kimg=0.064", "scheduler.kind=none",
        "confirm.seeds=2", "resources.max_concurrent=2", "scaling.bootstrap=200",
    ]
    assert run_cli(["--config", GRID_CONFIG] + sum((["--set", o] for o in overrides), [])) == 0
    output = tmp_path / "study"
    config = load_study_config(str(output / "study_config.yaml"))
    out = capfd.readouterr().out
    for noise in ("Configuration for experiment", "View detailed results", "tensorboard", "A new study created", "[I 20",
                  "INFO mlflow"):
        assert noise not in out, noise
    lines = out.splitlines()
    ending = lines[lines.index(next(line for line in lines if line.startswith("report: "))) - 3:]
    assert ending[0].startswith("baseline: N50 ") and ending[1].startswith("best: N50 ")
    assert ending[2].startswith("data multiplier of best (N50 of baseline / its N50): ")
    assert ending[4].startswith("browse: mlflow ui --backend-store-uri sqlite:///") and ending[5] == "all 12 trials ran"

    table = pq.read_table(output / "results.parquet").to_pylist()
    assert all(r["status"] == "completed" for r in table), [r["failure_reason"] for r in table]
    assert {(r["regime"], r["images_in_regime"]) for r in table} == {("n8", 8), ("n32", 32)}
    confirm = [r for r in table if r["phase"] == "confirm"]
    assert sorted((r["images_in_regime"], r["role"], r["seed"]) for r in confirm) == sorted(
        (n, role, seed) for n in (8, 32) for role in ("baseline", "best") for seed in (1000, 1001))
    records = {**load_records(output, "search"), **load_records(output, "confirm")}
    for row in table:
        history = records[row["trial_id"]]["history"]
        assert [h["kimg"] for h in history] == pytest.approx([0.064, 0.128, 0.256])  # the log schedule
        memorization = [h["memorization"] for h in history]
        assert row["memorization_max"] == max(memorization) and row["eval_time_s"] > 0
        assert (row["memorization_onset_kimg"] is None) == row["memorization_onset_censored"]
        assert row["best_fid_test"] == min(h["fid_test"] for h in history)
        assert row["best_fid_test_kimg"] in (0.064, 0.128, 0.256) and row["test_loss_min_kimg"] in (0.064, 0.128, 0.256)

    # Optuna: a two-objective study per size, each completed trial carrying its memorization constraint.
    storage = optuna.storages.RDBStorage(f"sqlite:///{output / 'optuna.db'}")
    for name in ("scaling-n8", "scaling-n32"):
        study = optuna.load_study(study_name=name, storage=storage)
        assert len(study.directions) == 2 and len(study.trials) == 2
        for trial in study.trials:
            row = next(r for r in table if r["phase"] == "search" and r["regime"] == name[8:] and r["optuna_trial"] == trial.number)
            assert trial.values == [row["fid_test"], row["memorization_max"]]
            assert trial.constraints["memorization_max"] == pytest.approx(row["memorization_max"] - 0.9)

    # MLflow: sample metrics at every eval point, the curve statistics at the end, nearest-neighbour grids.
    client = MlflowClient(tracking_uri=config.tracking_uri)
    row = confirm[0]
    assert [m.step for m in client.get_metric_history(row["mlflow_run_id"], "memorization")] == [64, 128, 256]
    assert client.get_metric_history(row["mlflow_run_id"], "memorization_max")[0].value == row["memorization_max"]
    run = client.get_run(row["mlflow_run_id"])
    assert ("memorization_onset_kimg" in run.data.metrics) != (run.data.tags.get("memorization_onset") == "not reached")
    assert run.data.params["regime_images"] == run.data.tags["images"] == str(row["images_in_regime"])
    assert [a.path for a in client.list_artifacts(row["mlflow_run_id"], "nearest")]
    assert [a.path for a in client.list_artifacts(row["mlflow_run_id"], "model")] == ["model/model.json", "model/model.pt"]
    registered = {m.name: set(m.aliases) for m in client.search_registered_models()}  # each cell's confirmed models
    assert registered == {f"scaling-{arm}-n{n}": {"confirmed"} for arm in ("baseline", "best") for n in (8, 32)}
    parent = client.get_run(json.loads((output / "study_state.json").read_text())["parent_run_id"])
    report_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{n}" for n in ("scaling.png", "curves.png", "pareto.png", "nearest.png", "scaling.json")} <= report_files

    # The scaling statistics: one entry per arm, both sizes per arm, a multiplier row against the baseline.
    scaling = json.loads((output / "report" / "scaling.json").read_text())
    assert sorted(e["arm"] for e in scaling["per_arm"]) == ["baseline", "best"]
    assert sorted((e["arm"], e["images"], e["seeds"]) for e in scaling["per_size"]) == [
        (arm, n, 2) for arm in ("baseline", "best") for n in (8, 32)]
    assert [(m["arm"], m["reference"]) for m in scaling["multipliers"]] == [("best", "baseline")]
    for entry in scaling["per_arm"]:
        assert entry["n50"] is not None or entry["n50_bound"] in ("below", "above")
    summary = (output / "report" / "summary.md").read_text()
    assert "## Where memorization starts" in summary and "![scaling](scaling.png)" in summary
    for name, value in parent.data.metrics.items():  # headline statistics, named by statistic and arm
        assert name.split(".")[0] in {"n50", "n50_low", "n50_high", "emm", "emm_low", "emm_high", "onset_slope",
                                      "onset_slope_low", "onset_slope_high", "data_multiplier", "data_multiplier_low",
                                      "data_multiplier_high", "data_multiplier_lower_bound"}, name

    # `python -m study.report` rewrites the same results and report from the ledger alone.
    (output / "results.parquet").unlink()
    (output / "report" / "scaling.json").unlink()
    assert report_main([str(output)]) == 0
    rewritten = pq.read_table(output / "results.parquet").to_pylist()
    assert [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rewritten] == \
        [{k: v for k, v in r.items() if k != "wall_time_s"} for r in table]
    assert json.loads((output / "report" / "scaling.json").read_text()) == scaling
    for row in table:  # the best FIDs among the points that copy less than the onset threshold
        uncopied = [h["fid_test"] for h in records[row["trial_id"]]["history"] if h["memorization"] < 0.1]
        assert row["uncopied_fid_test"] == (min(uncopied) if uncopied else None)
