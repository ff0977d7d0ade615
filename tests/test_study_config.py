"""The study CLI's front door: bad configs fail in one clear line before Ray starts; --dry-run prints the plan."""

import subprocess
import sys

import pytest

from study.config import load_study_config
from study.driver.plan import Node, PlanError, check_fits
from tests.conftest import GRID_CONFIG, ROOT
from trainables.config_io import ConfigError


def _run(*args, timeout=60):
    return subprocess.run([sys.executable, "study/run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


BAD_CONFIGS = [
    (["search.trials_per_regim=3"], "search.trials_per_regim: unknown key; allowed here: max_memorization, metric, mode, objectives, seed, space, trials_per_regime"),
    (["trial.score_augment.p=1.5"], "trial.score_augment.p: Input should be less than or equal to 1"),
    (["trial.score_augment.p=-0.1"], "trial.score_augment.p: Input should be greater than or equal to 0"),
    (["trial.model.dropout=-0.2"], "trial.model.dropout: Input should be greater than or equal to 0"),
    (["regimes=[0.1,1.5]"], "regimes: each regime is a fraction of the training set in (0, 1]; 1.5 is not"),
    (["regimes=[]"], "regimes: List should have at least 1 item"),
    (["regimes=[0.5,0.5]"], "regimes must be distinct"),
    (["trial.score_augment.transforms=[]", "trial.score_augment.p=0.5"], "transforms must not be empty when p > 0"),
    (["trial.dataset=imagenet"], "trial.dataset: Input should be 'digits', 'mnist5k', 'cifar10', 'image_folder' or 'synthetic'"),
    (["trial.score_augment.transforms=[hflip,twirl]"], "trial.score_augment.transforms.1: Input should be 'hflip'"),
    (["resources.num_workers=0"], "resources.num_workers: Input should be greater than or equal to 1"),
    (["resources.cpus_per_worker=0"], "resources.cpus_per_worker: Input should be greater than 0"),
    (["trial.train.batch_size=lots"], "trial.train.batch_size: Input should be a valid integer"),
    (["trial.train.total_kimg=0"], "trial.train.total_kimg: Input should be greater than 0"),
    (["search.space=everything"], "search.space 'everything' is unknown; choose one of scoreaug"),
    (["search.metric=accuracy"], "search.metric: Input should be 'fid', 'fid_test', 'test_loss', 'loss_gap', 'memorization' or 'memorization_max'"),
    (["search.objectives=[fid_test]"], "search.objectives: List should have at least 2 items"),
    (["search.objectives=[fid_test,copies]"], "search.objectives.1: Input should be 'fid'"),
    (["search.max_memorization=1.5"], "search.max_memorization: Input should be less than or equal to 1"),
    (["search.objectives=[fid_test,memorization_max]", "confirm.pick_by=loss_gap"],
     "confirm.pick_by loss_gap must be one of the search objectives (fid_test, memorization_max)"),
    (["search.metric=test_loss", "search.objectives=[test_loss,fid_test]", "trial.eval.fid=false"],
     "search.objectives fid_test needs trial.eval.fid: true"),
    (["regimes={images: [1, 4]}"], "regimes: each regime size is at least 2 images; 1 is not"),
    (["regimes={images: [18, 18]}"], "regimes must be distinct"),
    (["regimes={sizes: [18]}"], "regimes: training-set sizes are given as {images: [18, 36, 72]}"),
    (["regimes={images: []}"], "regimes: List should have at least 1 item"),
    (["capacities={model.model_channels: [16], model.dropout: [0.1]}"], "capacities: one capacity axis"),
    (["capacities={model.model_channels: [16, 16]}"], "capacities.model.model_channels: give distinct values"),
    (["capacities={model.model_channels: [2, 16]}"],
     "capacities.model.model_channels=2: model.model_channels: Input should be greater than or equal to 4"),
    (["capacities={model.widths: [2]}"], "capacities.model.widths=2: model.widths: unknown key"),
    (["scheduler.kind=hyperband"], "scheduler.kind: Input should be 'asha' or 'none'"),
    (["trial.model.preset=huge"], "model.preset: unknown preset 'huge'; choose one of"),
    (["name=my study!"], "name: must be 1-64 letters"),
    (["search.metric=fid", "search.max_memorization=null", "trial.eval.fid=false"], "search.metric fid needs trial.eval.fid: true"),
    (["scheduler.kind=asha", "scheduler.metric=fid", "trial.eval.fid_at=final"], "scheduler.metric fid needs trial.eval.fid_at: every"),
    (["confirm.seeds=-1"], "confirm.seeds: Input should be greater than or equal to 0"),
    (["trial.clean_augment.cutout_min=0.6", "trial.clean_augment.cutout_max=0.3"], "cutout_min must not exceed cutout_max"),
    (["trial.runtime.device=tpu"], "trial.runtime.device: Input should be 'auto', 'cpu' or 'cuda'"),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS)
def test_bad_config_gives_a_specific_message(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_study_config(None, overrides)
    assert message in str(caught.value)


def test_cli_bad_config_is_one_line_and_starts_no_ray(tmp_path):
    result = _run("--set", "trial.score_augment.p=2", "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["config error: trial.score_augment.p: Input should be less than or equal to 1 (got 2)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("name: [unclosed", "is not valid YAML at line 1"),
    ("- just\n- a list\n", "must hold a mapping of keys, not list"),
])
def test_malformed_yaml(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = _run("--config", str(path))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_missing_config_file():
    result = _run("--config", "/nonexistent/study.yaml")
    assert result.returncode == 2 and "config file /nonexistent/study.yaml does not exist" in result.stderr


def test_dry_run_prints_the_plan(tmp_path):
    result = _run("--dry-run", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    for expected in ("up to 18 trials (adaptive design: arms baseline, scoreaug_fixed; sizes placed in 4-288 images",
                     "a trial copying 0.9 stops as decided", "eval at kimg 2.5, 5, 10, 20, 25", "search: none",
                     "concurrency: 2 trial(s) at once", f"tracking: sqlite:///{tmp_path / 'out' / 'mlflow.db'}",
                     "tune storage:", "optuna storage:"):
        assert expected in result.stdout, result.stdout
    grid = _run("--config", GRID_CONFIG, "--dry-run", "--output", str(tmp_path / "out"))
    for expected in ("regime n18: 18 images", "regime n72: 72 images", "to minimize fid_test subject to memorization_max <= 0.1"):
        assert expected in grid.stdout, grid.stdout
    assert not (tmp_path / "out").exists()


def test_dry_run_names_fractions_capacities_and_a_size_the_pool_lacks(tmp_path):
    result = _run("--config", GRID_CONFIG, "--dry-run", "--output", str(tmp_path / "out"), "--set", "regimes=[0.3,1.0]",
                  "--set", "capacities={model.model_channels: [16, 32]}")
    assert result.returncode == 0, result.stderr
    for expected in ("regime r0.3-model_channels16: 0.3 of the training set = 431 images, capacity model_channels=16",
                     "regime r1-model_channels32: 1 of the training set = 1438 images, capacity model_channels=32",
                     "28 trials (3 searched per regime incl. the baseline, 16 confirmation runs)"):
        assert expected in result.stdout, result.stdout
    too_many = _run("--config", GRID_CONFIG, "--dry-run", "--set", "regimes={images: [18, 5000]}")
    assert too_many.returncode == 2 and "5000" in too_many.stderr and "1438" in too_many.stderr, too_many.stderr


@pytest.mark.parametrize("name", ["demo.yaml", "demo_grid.yaml", "mnist.yaml", "cifar10.yaml", "cifar10_grid.yaml", "scaling.yaml",
                                  "scaling_adaptive.yaml", "leakage.yaml", "capacity.yaml", "capacity_adaptive.yaml",
                                  "capacity_fid.yaml", "smoke.yaml"])
def test_shipped_configs_validate(name):
    result = _run("--config", f"study/configs/{name}", "--dry-run")
    assert result.returncode == 0, result.stderr


def test_cifar10_grid_dry_run_estimates_gpu_hours():
    """91 trials (7 sizes x 4 searched + 7 x 3 arms x 3 seeds) x 100 Mimg at EDM's cited ~145 img/s per V100."""
    result = _run("--config", "study/configs/cifar10_grid.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr
    training_hours = 91 * 100e6 / 145 / 3600
    line = next(line for line in result.stdout.splitlines() if "estimated cost" in line)
    assert f"{training_hours:,.0f} training" in line and "cited: EDM" in line and "no early stopping" in line
    assert "estimated cost" not in _run("--dry-run").stdout  # no GPUs asked for, no GPU-hours


def test_the_adaptive_cifar10_dry_run_prints_its_expected_and_worst_case_cost_beside_the_grids():
    """Expected: 4 searched + 0.33 (the simulated share at 2 trials at once) x 63 grid trials; worst: 4 + 32; grid: 91."""
    grid = _run("--config", "study/configs/cifar10_grid.yaml", "--dry-run").stdout
    grid_hours = next(line for line in grid.splitlines() if "estimated cost" in line).split(" GPU-hours")[0].split()[-1]
    result = _run("--config", "study/configs/cifar10.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "estimated cost" in line)
    per_trial = float(grid_hours.replace(",", "")) / 91
    expected, worst = (4 + 0.33 * 63) * per_trial, 36 * per_trial
    assert f"expected {expected:,.0f} GPU-hours" in line and f"worst case {worst:,.0f} (36 trials" in line, line
    assert f"against {grid_hours} for the grid of the same arms (91 trials" in line and "cited: EDM" in line, line


def test_infeasible_plans_name_what_is_missing():
    config = load_study_config(None, ["resources.gpus_per_worker=1"])
    with pytest.raises(PlanError, match="cluster has no GPUs"):
        check_fits(config, [Node(cpus=2, gpus=0)])
    config = load_study_config(None, ["resources.cpus_per_worker=4"])
    with pytest.raises(PlanError, match="no node fits one worker"):
        check_fits(config, [Node(cpus=2, gpus=0)])
    config = load_study_config(None, ["resources.num_workers=3"])
    with pytest.raises(PlanError, match="fits only 2 such worker"):
        check_fits(config, [Node(cpus=2, gpus=0)])
    assert check_fits(load_study_config(None, ["resources.max_concurrent=8"]), [Node(4, 0), Node(2, 0)]) == 6


def test_infeasible_plan_fails_fast_from_the_cli(tmp_path):
    result = _run("--set", "resources.num_workers=64", "--output", str(tmp_path / "out"), timeout=30)
    assert result.returncode == 2
    assert "resources.num_workers=64" in result.stderr and "lower resources.num_workers" in result.stderr


def test_one_trial_per_regime_runs_each_regimes_baseline(tmp_path):
    """The enqueued baseline is not a handed-out trial until asked: one trial per regime is the baseline, not zero."""
    from study.phases.cells import Cell
    from study.config import SearchConfig
    from study.phases.searcher import RegimeSearcher

    cells = [Cell("r0.5", 0.5, None, 719), Cell("r1", 1.0, None, 1438)]
    searcher = RegimeSearcher(cells, SearchConfig(trials_per_regime=1, metric="test_loss"), f"sqlite:///{tmp_path / 'optuna.db'}",
                              "one", 0.1, 0.256)
    handed = [searcher.suggest("t0"), searcher.suggest("t1")]
    assert sorted(s["regime"] for s in handed) == ["r0.5", "r1"] and all(s["role"] == "baseline" for s in handed)
    assert searcher.suggest("t2") == searcher.FINISHED


def _alias_bomb(levels=9):
    """A billion laughs in one line: nine nested aliases of nine references each expand to 9**9 items."""
    parts, previous = ["&a [1,1,1,1,1,1,1,1,1]"], "a"
    for name in "bcdefghi"[:levels - 1]:
        parts.append(f"&{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "[" + ",".join(parts) + "]"


@pytest.mark.parametrize("key", ["name", "design.min_images", "trial.score_augment.transforms"])
def test_a_yaml_alias_in_a_set_value_is_refused_in_one_line(tmp_path, key):
    result = _run("--set", f"{key}={_alias_bomb()}", "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"config error: --set {key}: YAML anchors and aliases (&name, *name) are not accepted in a --set value; write the value out"]
    assert not (tmp_path / "out").exists()


def test_a_huge_value_in_a_config_file_is_shown_shortened(tmp_path):
    """Aliases are plain YAML in a file; the error line shows the value they expand to, bounded."""
    path = tmp_path / "bomb.yaml"
    path.write_text(f"name: {_alias_bomb()}\n")
    result = _run("--config", str(path), "--output", str(tmp_path / "out"))
    [line] = result.stderr.strip().splitlines()
    assert result.returncode == 2 and line.startswith("config error: name: Input should be a valid string (got [[1, 1,")
    assert len(line) < 300 and line.endswith("...)")


def test_an_unknown_key_under_an_optional_section_lists_the_keys_allowed_there():
    for overrides in (["design.bogus=1"], ["design={bogus: 1}"]):
        with pytest.raises(ConfigError) as caught:
            load_study_config(None, overrides)
        assert str(caught.value) == ("design.bogus: unknown key; allowed here: kind, max_images, max_kimg, max_trials, "
                                     "min_images, saturation, searched_arm, seed_offset, slope, slots, target_log_width")
