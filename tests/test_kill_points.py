"""A driver killed at any moment resumes to the answer an uninterrupted run gives.

A real `study/run.py` (a tiny adaptive design, one trial at a time so its placements are a function of the
results alone) signals itself at a chosen point through the fault hook (study/faults.py): right after a trial's
ledger line and MLflow run are made, right after an eval point is recorded, and in the middle of the report; each
with SIGKILL (nothing runs after it) and SIGTERM (the driver saves and exits 130). Tune's periodic state save is
pushed past the study (TUNE_GLOBAL_CHECKPOINT_S), so a SIGKILL always falls between a ledger line and Tune's
next save, the window a real kill hits by chance. The study is then resumed, and its placements, results rows and
MLflow runs must equal those of an uninterrupted run of the same config, with no run left RUNNING.
"""

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from study.config import load_study_config
from study.driver.runner import run_study
from study.driver.signals import RESUME_LINE, STOP_GRACE_ENV
from study.faults import ENV, FaultPoint
from study.tracking.ledger import Ledger, load_records
from tests.conftest import ROOT, TINY_TRIAL

# The n-th pass that is killed: the second trial's open, the third eval point (the second trial's first), the report.
PASS = {FaultPoint.TRIAL_OPENED: 2, FaultPoint.RESULT_RECORDED: 3, FaultPoint.REPORT_WRITING: 1}
ROW_KEYS = ("phase", "role", "images_in_regime", "seed", "status", "kimg", "memorization", "memorization_max", "test_loss")


def _study(output) -> list[str]:
    return [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=killed", f"output={output}", "trial.eval.fid=true", "trial.eval.fid_at=every", "scheduler.kind=none",
        "search.metric=test_loss", "resources.max_concurrent=1", "confirm.arms={scoreaug_fixed: {score_augment.p: 0.5}}",
        "design={min_images: 2, max_images: 64, max_trials: 3}",
    ]


def _answer(output) -> dict:
    """What must not depend on whether the study was interrupted: placements in order, rows, runs."""
    records = sorted(load_records(output, "design").values(), key=lambda r: r["started"])
    rows = sorted(tuple(row[key] for key in ROW_KEYS) for row in pq.read_table(output / "results.parquet").to_pylist())
    config = load_study_config(None, _study(output))
    client = MlflowClient(tracking_uri=config.tracking_uri)
    experiment = client.get_experiment_by_name("killed").experiment_id
    runs = client.search_runs([experiment], "tags.phase = 'design'", max_results=100)
    assert all(r.info.status != "RUNNING" for r in client.search_runs([experiment], max_results=100))
    assert sorted(r.info.run_id for r in runs) == sorted(r["run_id"] for r in records)  # one run per trial
    return {"placements": [(r["suggestion"]["role"], r["suggestion"]["images"], r["suggestion"]["seed"],
                            r["suggestion"]["round"]) for r in records],
            "rows": rows, "run_statuses": sorted(r.info.status for r in runs),
            "report": (output / "report" / "design.json").read_text()}


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("uninterrupted") / "study"
    run_study(load_study_config(None, _study(output)), log=lambda *_: None)
    return _answer(output)


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("point", list(PASS))
def test_a_driver_killed_at_any_point_resumes_to_the_uninterrupted_answer(ray_session, uninterrupted, tmp_path,
                                                                          point, signal_name):
    output = tmp_path / "study"
    address = ray_session.get_runtime_context().gcs_address
    # The stop clock (study/driver/signals.py) is pushed past the test too: a SIGTERMed driver always saves Tune's
    # state, however loaded the machine, so the SIGTERM cases show that it does.
    env = {**os.environ, "RAY_AUTH_MODE": "token", ENV: f"{point}:{signal_name}:{PASS[point]}",
           "TUNE_GLOBAL_CHECKPOINT_S": "86400", STOP_GRACE_ENV: "86400"}
    args = [sys.executable, "study/run.py", "--address", address, *sum((["--set", s] for s in _study(output)), [])]
    driver = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = driver.stdout[-2000:] + driver.stderr[-3000:]
    if signal_name == "SIGKILL":
        assert driver.returncode == -9, log
    else:
        assert driver.returncode == 130, log
        assert driver.stderr.strip().splitlines()[-1] == RESUME_LINE
    assert '"phase": "done"' not in (output / "study_state.json").read_text()

    run_study(load_study_config(None, _study(output)), resume=True, log=lambda *_: None)

    assert _answer(output) == uninterrupted
    lost = Ledger(output / "trials_design.jsonl").lost
    if signal_name == "SIGKILL" and point != FaultPoint.REPORT_WRITING:  # the trial Tune never saved, placed again
        assert lost and all(r["closed"] for r in lost.values()), lost
    else:  # SIGTERM: Tune saved its state; nothing is lost
        assert not lost
