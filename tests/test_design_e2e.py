"""A tiny adaptive scaling design, for real: Ray Tune trials placed by the design after a real Optuna search, tracked
in MLflow, interrupted mid-design by SIGINT and resumed, then read back: every placement once, rounds and reasons
as run tags, the model's N50s stepped by round on the parent run, and the design's report."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from study.config import load_study_config
from study.driver.runner import run_study
from study.report.scaling import metric_name
from study.tracking.ledger import load_records
from tests.conftest import ROOT, TINY_TRIAL


def _design_study(output) -> list[str]:
    return [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=design", f"output={output}", "regimes={images: [4]}", "search.trials_per_regime=2", "search.metric=test_loss",
        "scheduler.kind=none", "trial.eval.fid=true", "trial.eval.fid_at=every", "trial.eval.schedule=log",
        "trial.eval.every_kimg=0.128", "trial.train.total_kimg=0.512", "resources.max_concurrent=2",
        "design={min_images: 2, max_images: 64, max_trials: 6, searched_arm: true}",
        "confirm.arms={scoreaug_fixed: {score_augment.p: 0.5}}",
    ]


def _ended(output, phase: str) -> int:
    return sum("status" in r for r in load_records(output, phase).values())


@pytest.mark.slow
def test_a_design_interrupted_mid_way_resumes_and_reports(ray_session, tmp_path):
    output = tmp_path / "study"
    address = ray_session.get_runtime_context().gcs_address
    args = [sys.executable, "study/run.py", "--address", address] + sum((["--set", s] for s in _design_study(output)), [])
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_AUTH_MODE": "token"})
        deadline = time.time() + 400
        while _ended(output, "design") < 1 and driver.poll() is None and time.time() < deadline:
            time.sleep(0.5)  # polling the driver's own ledger, not waiting a fixed time
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=180) == 130, (tmp_path / "driver.log").read_text()[-3000:]
    assert json.loads((output / "study_state.json").read_text())["phase"] == "design"
    before = load_records(output, "design")

    config = load_study_config(None, _design_study(output))
    run_study(config, resume=True, log=lambda *_: None)

    records = load_records(output, "design")
    assert set(before) <= set(records) and all("status" in r for r in records.values())
    placements = [(r["suggestion"]["role"], r["suggestion"]["images"], r["suggestion"]["seed"]) for r in records.values()]
    assert len(placements) == len(set(placements)) <= 6  # every placement once, none repeated by the resume
    assert {role for role, _, _ in placements} == {"baseline", "scoreaug_fixed", "best"}
    assert all(2 <= images <= 64 for _, images, _ in placements)
    table = pq.read_table(output / "results.parquet").to_pylist()
    assert sorted(r["trial_id"] for r in table if r["phase"] == "design") == sorted(records)
    assert sum(r["phase"] == "search" for r in table) == 2

    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment = client.get_experiment_by_name("design")
    runs = client.search_runs([experiment.experiment_id], "tags.phase = 'design'", max_results=100)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(records)
    assert all(r.data.tags["placed_by"] in ("bracket", "refine", "confirm") and int(r.data.tags["round"]) >= 1 for r in runs)
    [parent] = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    rounds = max(int(r.data.tags["round"]) for r in runs)
    stepped = {name: [m.step for m in client.get_metric_history(parent.info.run_id, name)]
               for name in parent.data.metrics if name.startswith("model_n50")}
    assert stepped and all(steps == sorted(set(steps)) and steps[-1] == rounds for steps in stepped.values())
    assert max(len(steps) for steps in stepped.values()) >= 2  # the estimate is charted as it converged
    design = json.loads((output / "report" / "design.json").read_text())[""]
    assert len(design["placements"]) == len(records) and [row["kimg"] for row in design["by_kimg"]] == [0.128, 0.256, 0.512]
    assert (output / "report" / "design.png").exists() and (output / "report" / "n50_kimg.png").exists()
    assert "## The adaptive design" in (output / "report" / "summary.md").read_text()
    # Every ended trial's final EMA weights are its run's model/ (across the resume too), and each arm's kept models
    # are registered with their aliases; the report shows their copies.
    assert all([a.path for a in client.list_artifacts(r.info.run_id, "model")] == ["model/model.json", "model/model.pt"] for r in runs)
    registered = {m.name: set(m.aliases) for m in client.search_registered_models()}
    assert set(registered) == {"design-baseline", "design-scoreaug_fixed", "design-best"}
    assert all({"smallest", "largest"} <= aliases for aliases in registered.values())
    assert (output / "report" / "copies.png").exists() and "](copies.png)" in (output / "report" / "summary.md").read_text()


@pytest.mark.slow
def test_a_capacity_crossed_design_places_and_reports_each_width_on_its_own(ray_session, tmp_path):
    overrides = [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=widths", f"output={tmp_path / 'widths'}", "capacities={model.model_channels: [8, 16]}",
        "trial.eval.fid=true", "trial.eval.fid_at=every", "scheduler.kind=none", "search.metric=test_loss", "resources.max_concurrent=2",
        "design={min_images: 2, max_images: 64, max_trials: 3}", "confirm.arms={scoreaug_fixed: {score_augment.p: 0.5}}",
    ]
    config = load_study_config(None, overrides)
    output = run_study(config, log=lambda *_: None)

    rows = [r for r in pq.read_table(output / "results.parquet").to_pylist() if r["phase"] == "design"]
    widths = {"model_channels=8": 8, "model_channels=16": 16}
    for label, width in widths.items():
        mine = [r for r in rows if r["capacity"] == label]
        assert 2 <= len(mine) <= 3 and {r["role"] for r in mine} == {"baseline", "scoreaug_fixed"}
        assert all(r["param.model.model_channels"] == width and 2 <= r["images_in_regime"] <= 64 for r in mine)
    assert {r["capacity"] for r in rows} == set(widths)

    design = json.loads((output / "report" / "design.json").read_text())
    assert set(design) == set(widths)
    assert all(len(design[label]["placements"]) == sum(r["capacity"] == label for r in rows) for label in widths)
    summary = (output / "report" / "summary.md").read_text()
    assert all(f"### The adaptive design at {label}" in summary for label in widths)
    table = summary.split("### By capacity", 1)[1].splitlines()
    assert [line.split(" | ")[0] for line in table if line.startswith("| model_channels=")] == [f"| {label}" for label in widths]
    assert f"| design | {len(rows)} | {sum(r['kimg'] for r in rows):.3g} |" in summary  # what it cost, from the same rows

    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment = client.get_experiment_by_name("widths")
    runs = client.search_runs([experiment.experiment_id], "tags.phase = 'design'", max_results=100)
    assert sorted(r.data.tags["capacity"] for r in runs) == sorted(r["capacity"] for r in rows)
    [parent] = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    # N50 itself, or the end that bounds it when the tiny budget leaves it unbracketed (model_n50_high...)
    logged = lambda label: [n for n in parent.data.metrics if n.startswith("model_n50") and n.endswith(metric_name("", "baseline", label))]
    assert all(logged(label) for label in widths), sorted(parent.data.metrics)
