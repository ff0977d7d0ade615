"""Early stopping within a cell: ASHA whose rungs compare a trial only with trials of its own cell.

Ray's ASHA ranks every trial of the experiment on one ladder. A study's cells differ by design: a small
training set has a higher held-out loss than a large one at any setting, so on a shared ladder the small
regimes' trials (their baselines included) are stopped for their regime, not their config, and the regimes
where memorization matters most end up with nothing searched to confirm.
"""

from __future__ import annotations

import copy

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from study.config import StudyConfig
from study.phases.suggestion import Suggestion
from study.stats.memorization_model import decided
from study.stats.running_max import RunningMax


class PerCellASHA(ASHAScheduler):
    """ASHA with one set of brackets per cell (the trial's `Suggestion.cell`); everything else as Ray's."""

    def __init__(self, **asha_kwargs):
        super().__init__(**asha_kwargs)
        self._fresh_brackets = copy.deepcopy(self._brackets)
        self._cell_brackets: dict[str, list] = {}

    def on_trial_add(self, tune_controller, trial):
        cell = Suggestion.from_tune(trial.config).cell
        # ASHA assigns the trial to one of `self._brackets`; make those the cell's own before it does. `_brackets` is
        # Ray's private attribute: Ray is pinned (pyproject.toml) and tests/test_study_contracts.py's
        # test_asha_compares_a_trial_only_with_trials_of_its_own_cell fails if it stops working.
        self._brackets = self._cell_brackets.setdefault(cell, copy.deepcopy(self._fresh_brackets))
        super().on_trial_add(tune_controller, trial)


def early_stopping(config: StudyConfig) -> PerCellASHA | None:
    """ASHA on the scheduler's metric at eval points (kimg), in the search's direction, each cell on its own
    ladder; None without early stopping."""
    if config.scheduler.kind != "asha":
        return None
    total_kimg = config.trial.train.total_kimg
    return PerCellASHA(time_attr="kimg", metric=config.scheduler.metric, mode=config.search.mode, max_t=total_kimg,
                       grace_period=min(config.scheduler.grace_kimg, total_kimg),
                       reduction_factor=config.scheduler.reduction_factor)


class DecidedStopper(FIFOScheduler):
    """Stops a design trial once its answer is decided: it has copied `saturation` or more at an eval point.

    Its memorization_max can only grow from there, so training on adds nothing the design needs; the trial
    enters the fit as right-censored at the value it reached (study/stats/memorization_model.py), never as if
    that value were final, and its eval points stay in the ledger, MLflow and results.parquet."""

    def __init__(self, saturation: float):
        super().__init__()
        self.saturation = saturation
        self.maxima = RunningMax()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        maximum = self.maxima.update(trial.trial_id, result)
        return TrialScheduler.STOP if decided([maximum], self.saturation) else TrialScheduler.CONTINUE
