"""The leakage ablation config runs end to end at a tiny budget, so it cannot rot; bad arms are refused up front."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from study.config import ConfigError, load_study_config
from study.run import main as run_cli
from study.driver.runner import run_study
from tests.conftest import TINY_TRIAL

LEAKAGE = Path(__file__).resolve().parent.parent / "study" / "configs" / "leakage.yaml"


def test_leakage_config_declares_the_six_arms_and_a_reference():
    config = load_study_config(LEAKAGE)
    arms = config.ablation.arms
    assert len(arms) == 7 and arms["none"] == {"score_augment.p": 0.0, "clean_augment.p": 0.0}
    for transform in ("rot90", "translate"):
        for label in (True, False):
            name = f"{transform}-scoreaug-{'label' if label else 'nolabel'}"
            assert arms[name]["score_augment.transforms"] == [transform] and arms[name]["score_augment.use_label"] is label
    for label in (True, False):
        arm = arms[f"rot90-clean-{'label' if label else 'nolabel'}"]
        assert arm["clean_augment.transforms"] == ["rot90"] and arm["clean_augment.use_label"] is label
    assert config.ablation.seeds >= 2


@pytest.mark.parametrize("arm, message", [
    ('{"bad": {"score_augment.p": 2}}', "ablation.arms.bad: score_augment.p: Input should be less than or equal to 1"),
    ('{"bad": {"score_augment.rotate": true}}', "ablation.arms.bad: score_augment.rotate: unknown key"),
    ('{"bad name!": {"score_augment.p": 0.5}}', "arm name 'bad name!'"),
    ('{}', "ablation.arms: Dictionary should have at least 1 item"),
])
def test_bad_arms_are_refused_before_anything_runs(arm, message):
    with pytest.raises(ConfigError) as err:
        load_study_config(LEAKAGE, [f"ablation.arms={arm}"])
    assert message in str(err.value)


def test_dry_run_lists_the_arms(capsys):
    assert run_cli(["--config", str(LEAKAGE), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "21 trials (ablation: 7 arms x 3 seeds per regime, no search)" in out and "rot90-clean-nolabel" in out


@pytest.mark.slow
def test_leakage_ablation_runs_end_to_end(ray_session, tmp_path):
    overrides = [f"trial.{s}" for s in TINY_TRIAL] + [
        f"output={tmp_path / 'leakage'}", "trial.eval.fid=true", "ablation.seeds=2", "resources.max_concurrent=2",
    ]
    config = load_study_config(LEAKAGE, overrides)
    output = run_study(config, log=lambda *_: None)

    rows = pq.read_table(output / "results.parquet").to_pylist()
    arms = set(config.ablation.arms)
    assert len(rows) == 14 and all(r["phase"] == "ablation" and r["status"] == "completed" for r in rows)
    assert sorted((r["role"], r["seed"]) for r in rows) == sorted((a, s) for a in arms for s in (0, 1))
    assert all(0 <= r["leakage"] <= 1 and r["fid"] > 0 and r["fid_test"] > 0 and r["memorization"] is not None for r in rows)
    nolabel = next(r for r in rows if r["role"] == "rot90-scoreaug-nolabel")
    assert nolabel["param.score_augment.use_label"] is False and nolabel["param.score_augment.transforms"] == '["rot90"]'

    summary = pq.read_table(output / "report" / "ablation.parquet").to_pylist()
    assert {e["arm"] for e in summary} == arms and all(e["seeds"] == 2 for e in summary)
    assert all(e["leakage_std"] is not None and e["fid_floor_mean"] > 0 for e in summary)
    markdown = (output / "report" / "ablation.md").read_text()
    assert all(f"| r0.3 | {arm} | 2 |" in markdown for arm in arms)
    assert (output / "report" / "ablation.png").stat().st_size > 0

    client = MlflowClient(tracking_uri=config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("leakage").experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 14 and {c.data.tags["role"] for c in children} == arms
    assert all(c.data.tags["searcher"] == "ablation" and "leakage" in c.data.metrics for c in children)
