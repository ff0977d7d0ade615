"""When a trial evaluates: every every_kimg, log-spaced, or at explicit points; and what each eval point writes."""

import json

import pytest

from tests.conftest import TINY_TRIAL
from trainables.checkpoint import NEAREST_GRID, SAMPLE_GRID
from trainables.config import EvalConfig, load_trial_config
from trainables.config_io import ConfigError
from trainables.loop import run_trial
from trainables.session import LocalSession


def test_every_schedule_is_multiples_plus_the_total():
    assert EvalConfig(every_kimg=5).points_kimg(22) == [5, 10, 15, 20, 22]
    assert EvalConfig(every_kimg=5).points_kimg(20) == [5, 10, 15, 20]
    assert EvalConfig(every_kimg=5).points_kimg(3) == [3]


def test_log_schedule_doubles_from_every_kimg():
    assert EvalConfig(every_kimg=5, schedule="log").points_kimg(120) == [5, 10, 20, 40, 80, 120]
    assert EvalConfig(every_kimg=5, schedule="log").points_kimg(80) == [5, 10, 20, 40, 80]


def test_explicit_points_win_and_are_sorted():
    ev = EvalConfig(every_kimg=5, schedule="log", at_kimg=[50, 40, 70])
    assert ev.points_kimg(60) == [40, 50, 60]
    with pytest.raises(ConfigError, match="eval.at_kimg"):
        load_trial_config(None, ["eval.at_kimg=[0, 10]"])


def _kimgs(folder):
    return [json.loads(line)["kimg"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_trial_reports_at_the_log_points_and_resumes_after_the_last(tmp_path):
    log_schedule = TINY_TRIAL + ["eval.schedule=log", "eval.every_kimg=0.032", "eval.fid_at=every"]
    straight = run_trial(load_trial_config(None, log_schedule), LocalSession(tmp_path / "a"), log=lambda _: None)
    assert [r["kimg"] for r in straight] == load_trial_config(None, log_schedule).eval.points_kimg(0.256)
    assert [r["kimg"] for r in straight] == [0.032, 0.064, 0.128, 0.256]
    assert all("memorization" in r and r["eval_seconds"] >= r["sample_eval_seconds"] for r in straight)

    run_trial(load_trial_config(None, log_schedule + ["train.total_kimg=0.096"]), LocalSession(tmp_path / "b"), log=lambda _: None)
    run_trial(load_trial_config(None, log_schedule), LocalSession(tmp_path / "b"), log=lambda _: None)
    assert _kimgs(tmp_path / "b") == [0.032, 0.064, 0.096, 0.128, 0.256]


def test_points_reached_mid_batch_evaluate_once_at_the_first_batch_past_them(tmp_path):
    config = load_trial_config(None, TINY_TRIAL + ["eval.at_kimg=[0.1, 0.11, 0.2]"])  # batch 32
    reports = run_trial(config, LocalSession(tmp_path), log=lambda _: None)
    assert [r["kimg"] for r in reports] == [0.128, 0.224, 0.256]
    assert all(r["eval_seconds"] > 0 for r in reports) and "sample_eval_seconds" not in reports[0]


def test_each_eval_point_writes_samples_beside_their_nearest_training_images(tmp_path):
    session = LocalSession(tmp_path)
    run_trial(load_trial_config(None, TINY_TRIAL + ["regime_images=18"]), session, log=lambda _: None)
    assert (session.latest_checkpoint() / NEAREST_GRID).is_file() and (session.latest_checkpoint() / SAMPLE_GRID).is_file()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "kimg-000000128-nearest.png", "kimg-000000128.png", "kimg-000000256-nearest.png", "kimg-000000256.png"]
