"""The memorization-aware search: the constraint and the objectives reach Optuna, confirmation picks by the
config's rule, and `search.mode` reaches Optuna's directions and ASHA."""

import optuna
import pytest

from tests.conftest import GRID_CONFIG
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState

from study.phases.cells import Cell
from study.config import SearchConfig, load_study_config
from study.phases.confirm import pick_confirmed
from study.phases.schedulers import early_stopping
from study.phases.searcher import RegimeSearcher, load_regime_study

CELL = Cell("n18", 1.0, 18, 18)
TOTAL_KIMG = 1.0


def _run(searcher: RegimeSearcher, trial_id: str, memorization: list[float], **final) -> dict:
    """Hand a trial out, feed it eval points with these memorization values, and complete it."""
    suggestion = searcher.suggest(trial_id)
    for k, value in enumerate(memorization, start=1):
        searcher.on_trial_result(trial_id, {"kimg": TOTAL_KIMG * k / len(memorization), "memorization": value})
    searcher.on_trial_complete(trial_id, {"kimg": TOTAL_KIMG, "memorization": memorization[-1], **final})
    return suggestion


def test_memorization_constraint_reaches_optuna_as_max_over_eval_points(tmp_path):
    search = SearchConfig(trials_per_regime=3, metric="fid_test", max_memorization=0.1)
    searcher = RegimeSearcher([CELL], search, f"sqlite:///{tmp_path / 'optuna.db'}", "c", 0.1, TOTAL_KIMG)
    _run(searcher, "t0", [0.05, 0.5, 0.3], fid_test=20.0)  # copied at its peak: infeasible though it ends at 0.3
    _run(searcher, "t1", [0.0, 0.02, 0.04], fid_test=30.0)
    _run(searcher, "t2", [0.0, 0.1, 0.1], fid_test=25.0)  # exactly at the limit: feasible
    trials = load_regime_study(f"sqlite:///{tmp_path / 'optuna.db'}", "c-n18").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.constraints["memorization_max"] for t in trials] == pytest.approx([0.4, -0.06, 0.0])
    assert [t.values for t in trials] == [[20.0], [30.0], [25.0]]
    best, note = pick_confirmed(trials, search, None)
    assert best.number == 2 and note == ""  # the feasible trial with the lowest fid_test; trial 0 copies


def test_multi_objective_directions_and_values_come_from_the_config(tmp_path):
    search = SearchConfig(trials_per_regime=2, objectives=["fid_test", "memorization_max"], mode="max")
    searcher = RegimeSearcher([CELL], search, f"sqlite:///{tmp_path / 'optuna.db'}", "m", 0.1, TOTAL_KIMG)
    _run(searcher, "t0", [0.2, 0.6], fid_test=12.0)
    study = load_regime_study(f"sqlite:///{tmp_path / 'optuna.db'}", "m-n18")
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MAXIMIZE]
    assert study.get_trials()[0].values == [12.0, 0.6]


def test_a_trial_stopped_early_or_missing_an_objective_never_completes(tmp_path):
    search = SearchConfig(trials_per_regime=2, objectives=["fid_test", "memorization_max"])
    searcher = RegimeSearcher([CELL], search, f"sqlite:///{tmp_path / 'optuna.db'}", "p", 0.1, TOTAL_KIMG)
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"kimg": TOTAL_KIMG / 2, "memorization": 0.1, "fid_test": 9.0})
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"kimg": TOTAL_KIMG, "fid_test": 9.0})  # no memorization was ever measured
    states = [t.state for t in load_regime_study(f"sqlite:///{tmp_path / 'optuna.db'}", "p-n18").get_trials()]
    assert states == [TrialState.PRUNED, TrialState.FAIL]


def _trial(number: int, values: list[float], memorization_max: float | None = None, role: str = "search"):
    system = {} if memorization_max is None else {"constraints:memorization_max": memorization_max - 0.1}
    trial = optuna.trial.create_trial(values=values, params={"p": 0.5}, distributions={"p": FloatDistribution(0, 1)},
                                      user_attrs={"role": role, "overrides": {}}, system_attrs=system)
    trial.number = number
    return trial


def test_confirmation_picks_among_pareto_optimal_trials_by_the_named_objective():
    search = SearchConfig(objectives=["fid_test", "memorization_max"])
    trials = [_trial(0, [10.0, 0.9], role="baseline"), _trial(1, [20.0, 0.1]), _trial(2, [15.0, 0.3]),
              _trial(3, [16.0, 0.35]), _trial(4, [30.0, 0.0])]  # trial 3 is dominated by trial 2
    assert pick_confirmed(trials, search, None)[0].number == 2  # lowest fid_test on the front; baseline never picked
    assert pick_confirmed(trials, search, "memorization_max")[0].number == 4


def test_confirmation_without_a_feasible_trial_takes_the_least_infeasible_and_says_so():
    search = SearchConfig(metric="fid_test", max_memorization=0.1)
    trials = [_trial(0, [10.0], 0.9), _trial(1, [30.0], 0.4), _trial(2, [20.0], 0.6)]
    best, note = pick_confirmed(trials, search, None)
    assert best.number == 1 and "no searched trial met memorization_max <= 0.1" in note and "0.4" in note


def test_search_mode_reaches_asha():
    for mode in ("min", "max"):
        config = load_study_config(GRID_CONFIG, [f"search.mode={mode}", "scheduler.kind=asha"])
        assert early_stopping(config)._mode == mode
    assert early_stopping(load_study_config(GRID_CONFIG, ["scheduler.kind=none"])) is None


def test_capacity_cells_cross_every_size_and_reach_the_trial_config():
    from study.phases.cells import study_cells
    from study.phases.suggestion import trial_config

    config = load_study_config(GRID_CONFIG, ["regimes={images: [18, 36]}", "capacities={model.model_channels: [16, 32]}"])
    cells = study_cells(config)
    assert [(c.name, c.images, c.capacity) for c in cells] == [
        ("n18-model_channels16", 18, "model_channels=16"), ("n36-model_channels16", 36, "model_channels=16"),
        ("n18-model_channels32", 18, "model_channels=32"), ("n36-model_channels32", 36, "model_channels=32")]
    trial = trial_config(config.trial.model_dump(), cells[3].suggestion(overrides={"score_augment.p": 0.5}, seed=3))
    assert trial["model"]["model_channels"] == 32 and trial["regime_images"] == 36 and trial["seed"] == 3
    assert trial["score_augment"]["p"] == 0.5
