"""The study's contracts that only slow end-to-end tests touched: each pinned here on hand-built inputs, in seconds.

The summary table's statistics, the confirmed pick, ablation order, what a resume accepts, the pool sizes,
the fixed searcher's resume, and the search direction reaching Optuna and ASHA.
"""

import math

import numpy as np
import optuna
import pytest
from scipy import stats

from study.phases.ablation import ablation_suggestions
from study.phases.cells import Cell, study_cells
from study.config import load_study_config
from study.phases.confirm import FixedSearcher, confirmation_suggestions
from study.contract import Role, study_name
from study.report.results import summarize
from study.driver.state import search_fingerprint
from study.phases.schedulers import early_stopping
from study.phases.searcher import RegimeSearcher, load_regime_study, open_regime_study
from study.phases.suggestion import Suggestion
from tests.conftest import GRID_CONFIG, TINY_TRIAL
from trainables.catalog import DATASETS
from trainables.data import load_dataset, pool_size


def _config(*sets):
    return load_study_config(GRID_CONFIG, [f"trial.{s}" for s in TINY_TRIAL] + ["search.metric=test_loss",
                                                                          "search.max_memorization=null", *sets])


def _row(regime, images, role, seed, fid, **metrics):
    base = {"fid_test": fid + 1, "loss_gap": 0.1, "memorization": 0.0, "leakage": 0.2, "fid_floor": 3.0}
    return {"phase": "confirm", "status": "completed", "regime": regime, "regime_fraction": 1.0, "images_in_regime": images,
            "capacity": "", "role": role, "seed": seed, "fid": fid, **base, **metrics}


def test_summarize_gives_means_spreads_welch_and_the_verdict_in_regime_order():
    rows = [_row("n72", 72, Role.BEST, s, f) for s, f in enumerate([10.0, 11.0, 12.0])]
    rows += [_row("n72", 72, Role.BASELINE, s, f) for s, f in enumerate([20.0, 21.0, 22.0])]
    rows += [_row("n18", 18, Role.BEST, s, f) for s, f in enumerate([30.0, 34.0])]
    rows += [_row("n18", 18, Role.BASELINE, s, f) for s, f in enumerate([31.0, 33.0])]
    rows += [{**_row("n18", 18, Role.BEST, 9, 999.0), "status": "failed"}]  # not completed: left out
    summary = summarize(rows)
    assert [e["regime"] for e in summary] == ["n18", "n72"]  # smallest training set first, not input order
    n18, n72 = summary
    assert n72["best_fid_mean"] == pytest.approx(11.0) and n72["best_fid_std"] == pytest.approx(1.0)
    assert n72["baseline_seeds"] == 3 and n72["best_fid_test_mean"] == pytest.approx(12.0)
    assert n72["fid_welch_p"] == pytest.approx(stats.ttest_ind([10, 11, 12], [20, 21, 22], equal_var=False).pvalue)
    assert n72["fid_difference_exceeds_spread"] is True and n72["fid_relative_improvement"] == pytest.approx(10 / 21)
    assert n18["best_seeds"] == 2 and n18["best_fid_mean"] == pytest.approx(32.0)
    assert n18["fid_difference_exceeds_spread"] is False  # |32 - 32| is inside std 2.83 + 1.41


def test_confirmation_picks_the_best_completed_non_baseline_trial(tmp_path):
    config = _config("regimes={images: [18]}", "confirm.seeds=2")
    [cell] = study_cells(config)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_regime_study(url, study_name(config.name, cell.name), 0, ["minimize"])
    outcomes = [(Role.BASELINE, 0.1, optuna.trial.TrialState.COMPLETE),  # the best value, but the baseline
                ("search", 0.3, optuna.trial.TrialState.COMPLETE), ("search", 0.2, optuna.trial.TrialState.COMPLETE),
                ("search", None, optuna.trial.TrialState.PRUNED), ("search", None, optuna.trial.TrialState.FAIL)]
    for number, (role, value, state) in enumerate(outcomes):
        trial = study.ask()
        trial.set_user_attr("role", role)
        trial.set_user_attr("overrides", {"score_augment.p": number / 10})
        study.tell(trial, value, state=state)
    suggestions, notes = confirmation_suggestions([cell], url, config.name, config.confirm, config.search, 0.1)
    assert notes == []
    assert [(s.role, s.optuna_trial, s.seed) for s in suggestions] == [
        (Role.BEST, 2, 1000), (Role.BEST, 2, 1001), (Role.BASELINE, None, 1000), (Role.BASELINE, None, 1001)]
    assert suggestions[0].overrides == {"score_augment.p": 0.2} and suggestions[0].trial["score_augment"]["p"] == 0.2
    assert suggestions[2].trial["score_augment"]["p"] == 0.0  # the plain-EDM baseline


def test_ablation_runs_seeds_outermost_then_cells_then_arms():
    config = _config("regimes={images: [18, 36]}", "ablation={arms: {a: {score_augment.p: 0.5}, b: {}}, seeds: 2}")
    order = [(s.seed, s.cell, s.role) for s in ablation_suggestions(config, study_cells(config))]
    assert order == [(0, "n18", "a"), (0, "n18", "b"), (0, "n36", "a"), (0, "n36", "b"),
                     (1, "n18", "a"), (1, "n18", "b"), (1, "n36", "a"), (1, "n36", "b")]


@pytest.mark.parametrize("change, accepted", [
    ("output=/elsewhere", True), ("tracking.uri=sqlite:////tmp/x.db", True), ("storage_path=/shared", True),
    ("resources.max_concurrent=1", True), ("resources.cpus_per_worker=2", True), ("failures.max_fraction=0.9", True),
    ("resources.num_workers=2", False), ("search.trials_per_regime=9", False), ("regimes={images: [18]}", False),
    ("trial.train.total_kimg=1.0", False), ("search.space=scoreaug_with_capacity", False), ("confirm.seeds=5", False),
])
def test_a_resume_accepts_where_results_go_and_refuses_what_they_mean(change, accepted):
    assert (search_fingerprint(_config(change)) == search_fingerprint(_config())) == accepted


@pytest.mark.parametrize("name", [d for d in DATASETS if d not in ("cifar10", "image_folder")])  # those need files
def test_pool_size_is_the_loaded_training_split(name):
    assert pool_size(name) == len(load_dataset(name).train)


def test_fixed_searcher_resumes_where_it_stopped(tmp_path):
    suggestions = [Suggestion(cell="n18", regime_fraction=1.0, seed=seed) for seed in range(3)]
    searcher = FixedSearcher(suggestions)
    assert searcher.suggest("t0") == suggestions[0].to_tune()
    searcher.save(str(tmp_path / "state.pkl"))
    resumed = FixedSearcher(suggestions)
    resumed.restore(str(tmp_path / "state.pkl"))
    assert [resumed.suggest(t) for t in ("t1", "t2", "t3")] == [s.to_tune() for s in suggestions[1:]] + [FixedSearcher.FINISHED]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_search_mode_reaches_optuna_and_asha(tmp_path, mode):
    config = _config(f"search.mode={mode}", "scheduler.kind=asha", "regimes={images: [18]}")
    searcher = RegimeSearcher(study_cells(config), config.search, f"sqlite:///{tmp_path / 'optuna.db'}", "m", 0.1, 0.256)
    searcher.suggest("t0")
    study = load_regime_study(f"sqlite:///{tmp_path / 'optuna.db'}", "m-n18")
    assert study.direction == (optuna.study.StudyDirection.MINIMIZE if mode == "min" else optuna.study.StudyDirection.MAXIMIZE)
    assert early_stopping(config)._mode == mode


def test_a_cell_resolves_each_trial_config_once_on_the_driver():
    config = _config("regimes={images: [18]}", "capacities={model.model_channels: [16]}")
    [cell] = study_cells(config)
    good = cell.suggestion(role="search", overrides={"score_augment.p": 0.4}, seed=3)
    assert good.trial["model"]["model_channels"] == 16 and good.trial["regime_images"] == 18
    assert good.trial["score_augment"]["p"] == 0.4 and good.trial["seed"] == 3
    bad = cell.suggestion(role="search", overrides={"score_augment.p": 2.0}, seed=0)
    assert bad.trial is None and "score_augment.p: Input should be less than or equal to 1" in bad.invalid
    assert "trial" not in bad.to_tune() and Suggestion.from_tune(bad.to_tune()) == bad
    assert Cell("n2", 1.0, 2, 2).suggestion(overrides={}).trial is None  # a bare cell resolves nothing
    assert not math.isnan(np.float64(good.trial["train"]["total_kimg"]))


def test_a_suggestion_refuses_a_key_it_does_not_have():
    """A misspelt key is an error wherever a suggestion is made or read back, never a silent None."""
    import dataclasses

    suggestion = Suggestion(cell="n18", regime_fraction=1.0, regime_images=18, images=18, role="baseline", seed=3)
    assert Suggestion.from_tune(suggestion.to_tune()) == suggestion
    assert suggestion.to_tune()["regime"] == "n18"  # the persisted name of the cell, as old ledgers hold it
    with pytest.raises(KeyError, match="no field sed"):
        Suggestion.from_tune({**suggestion.to_tune(), "sed": 3})
    with pytest.raises(TypeError):
        Suggestion(cell="n18", regime_fraction=1.0, sed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        suggestion.sed = 3


def test_fixed_arms_are_confirmed_beside_best_and_baseline_in_every_cell(tmp_path):
    config = _config("regimes={images: [18, 36]}", "confirm.seeds=1", "confirm.arms={fixed: {score_augment.p: 0.5}}")
    cells = study_cells(config)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    for cell, searched_value in zip(cells, (0.2, None)):  # n36: no searched trial completed
        study = open_regime_study(url, study_name(config.name, cell.name), 0, ["minimize"])
        trial = study.ask()
        trial.set_user_attr("role", "search")
        trial.set_user_attr("overrides", {"score_augment.p": 0.3})
        study.tell(trial, searched_value, state=optuna.trial.TrialState.COMPLETE if searched_value else optuna.trial.TrialState.PRUNED)
    suggestions, notes = confirmation_suggestions(cells, url, config.name, config.confirm, config.search, 0.1)
    assert [(s.cell, s.role) for s in suggestions] == [
        ("n18", Role.BEST), ("n18", Role.BASELINE), ("n18", "fixed"), ("n36", Role.BASELINE), ("n36", "fixed")]
    assert suggestions[2].trial["score_augment"]["p"] == 0.5
    assert notes == ["n36: no ScoreAug trial completed its full budget; no searched config to confirm"]


def test_asha_compares_a_trial_only_with_trials_of_its_own_cell():
    """A small regime's held-out loss is higher at any setting: on one shared ladder its trials would be stopped
    for their regime. Per cell, the better of two small-regime trials continues; the worse one is stopped."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    scheduler = early_stopping(_config("scheduler.kind=asha", "scheduler.grace_kimg=0.128", "scheduler.reduction_factor=2"))
    trials = {name: Trial("scoreaug_trial", config=Suggestion(cell=regime, regime_fraction=1.0).to_tune(), trial_id=name, stub=True)
              for name, regime in (("big_a", "n1438"), ("big_b", "n1438"), ("small_a", "n18"), ("small_b", "n18"))}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    actions = {name: scheduler.on_trial_result(None, trials[name], {"kimg": 0.128, "test_loss": loss})
               for name, loss in (("big_a", 0.30), ("big_b", 0.31), ("small_a", 0.60), ("small_b", 0.59))}
    assert actions == {"big_a": TrialScheduler.CONTINUE, "big_b": TrialScheduler.STOP,
                       "small_a": TrialScheduler.CONTINUE, "small_b": TrialScheduler.CONTINUE}


def test_run_names_say_the_arm_and_seed():
    from study.tracking.ledger import run_name

    def named(phase, **fields):
        return run_name(Suggestion(regime_fraction=1.0, **fields), "abc", phase)

    assert named("confirm", cell="n22", role="baseline", seed=1000) == "n22-baseline-s1000-abc"
    assert named("ablation", cell="n22-model_channels8", role="scoreaug_fixed", seed=0) == "n22-model_channels8-scoreaug_fixed-s0-abc"
    assert named("search", cell="n22", role="search", optuna_trial=2) == "n22-search-t2-abc"
    assert named("confirm", cell="n22", role="best", optuna_trial=2, seed=1001) == "n22-best-s1001-abc"


def test_the_default_study_keeps_the_fingerprint_earlier_releases_wrote():
    """A study folder started by earlier code resumes only if its config's fingerprint is unchanged: keys added
    since (an unset `design`) must not enter it. The value is the one the commit before the adaptive design wrote
    for the default study of then, which is demo_grid.yaml under its old name."""
    from study.config import DEFAULT_CONFIG

    grid = str(DEFAULT_CONFIG.with_name("demo_grid.yaml"))
    assert search_fingerprint(load_study_config(grid, ["name=demo"])) == "f06b7ee887dcd642"
    assert search_fingerprint(load_study_config(grid, ["name=demo", "design={}", "confirm.arms={f: {score_augment.p: 0.5}}"])) != "f06b7ee887dcd642"


def test_a_suggestion_tune_never_saved_is_asked_again_on_resume(tmp_path):
    """The driver is killed after Optuna handed out a trial but before Tune saved it: the resumed searcher holds
    only what Tune saved, fails the lost trial and asks its cell again (a lost baseline is enqueued again), so the
    phase reaches its trial count instead of waiting for a trial no one runs."""
    config = _config("regimes={images: [18]}", "search.trials_per_regime=3")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = RegimeSearcher(study_cells(config), config.search, url, config.name, 0.1, 0.256)
    baseline = searcher.suggest("t0")
    saved = searcher.get_state()  # Tune's checkpoint: t0 only
    searcher.suggest("t1")  # handed out, then the driver dies
    resumed = RegimeSearcher(study_cells(config), config.search, url, config.name, 0.1, 0.256)
    resumed.set_state(saved)
    trials = load_regime_study(url, f"{config.name}-n18").get_trials(deepcopy=False)
    assert trials[1].state == optuna.trial.TrialState.FAIL and trials[1].user_attrs["lost"]
    again = [resumed.suggest(t) for t in ("t2", "t3")]
    assert all(isinstance(s, dict) for s in again) and resumed.suggest("t4") == resumed.FINISHED
    assert baseline["role"] == "baseline"
    # a lost baseline comes back as the baseline
    url2 = f"sqlite:///{tmp_path / 'optuna2.db'}"
    first = RegimeSearcher(study_cells(config), config.search, url2, config.name, 0.1, 0.256)
    empty = first.get_state()
    first.suggest("b0")
    second = RegimeSearcher(study_cells(config), config.search, url2, config.name, 0.1, 0.256)
    second.set_state(empty)
    assert second.suggest("b1")["role"] == "baseline"
