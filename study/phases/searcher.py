"""One Optuna study per data-limited regime, behind a single Ray Tune searcher.

Tune runs all regimes (cells: regime x capacity) in one experiment (the cluster stays busy); this searcher
hands out trials cell by cell in turn and reports each result back to its own cell's Optuna study
(seeded TPE, multi-objective when the config names several objectives, persisted in an RDB storage).
Trials that ASHA stopped early are told to Optuna as PRUNED, diverged or failed ones as FAIL, so TPE never
learns from partial-budget values.
"""

from __future__ import annotations

import math
import pickle

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search_spaces.spaces import get_space
from study.phases.cells import Cell
from study.contract import OPTUNA_STATE, Role, baseline_overrides, baseline_params, study_name, trial_status
from study.config import SearchConfig
from study.stats.running_max import RunningMax

MEMORIZATION_CONSTRAINT = "memorization_max"
LOST = "lost"  # an Optuna trial whose Tune trial was never saved


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})


def open_regime_study(storage_url: str, name: str, seed: int, directions: list[str]) -> optuna.Study:
    """A cell's study: TPE (multi-objective TPE for several directions), which also reads the trials' constraints."""
    return optuna.create_study(
        study_name=name,
        storage=optuna_storage(storage_url),
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3),
        directions=directions,
        load_if_exists=True,
    )


def load_regime_study(storage_url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=optuna_storage(storage_url))


def trial_outcome(result: dict | None, error: bool, total_kimg: float, objectives: list[str]) -> tuple[TrialState, list[float] | None]:
    """How a finished Tune trial is told to Optuna: only a full-budget trial with finite objectives is COMPLETE."""
    state = OPTUNA_STATE[trial_status(result, error, total_kimg)]
    if state != TrialState.COMPLETE:
        return state, None
    values = [result.get(name) for name in objectives]
    if any(v is None or not math.isfinite(v) for v in values):
        return TrialState.FAIL, None
    return TrialState.COMPLETE, [float(v) for v in values]


class RegimeSearcher(Searcher):
    """Round-robin over cells; `trials_per_regime` asks per cell, the first of each being the baseline.

    `memorization_max` (the largest memorization over a trial's eval points, Gu et al.'s protocol) is kept per
    trial from its results, so it can be an objective, and the constraint `max_memorization` reaches Optuna as
    `memorization_max - max_memorization` (feasible at or below 0), for completed and pruned trials alike."""

    def __init__(self, cells: list[Cell], search: SearchConfig, storage_url: str, study_prefix: str,
                 base_dropout: float, total_kimg: float):
        # No metric for Tune: it would demand the objective in every result, but FID may arrive only at the end.
        super().__init__(metric=None, mode=None)
        self.cells = {cell.name: cell for cell in cells}
        self.search = search
        self.storage_url = storage_url
        self.study_prefix = study_prefix
        self.base_dropout = base_dropout
        self.total_kimg = total_kimg
        self.live: dict[str, tuple[str, int]] = {}
        self.memorization_max = RunningMax()
        self._studies: dict[str, optuna.Study] = {}

    def study_name(self, cell: str) -> str:
        return study_name(self.study_prefix, cell)

    def study(self, cell: str) -> optuna.Study:
        if cell not in self._studies:
            index = list(self.cells).index(cell)
            directions = [f"{self.search.mode}imize"] * len(self.search.objective_names)
            study = open_regime_study(self.storage_url, self.study_name(cell), self.search.seed + index, directions)
            if not study.trials:  # a resumed study already holds its baseline: never enqueue it twice
                study.enqueue_trial(baseline_params(self.base_dropout), user_attrs={"role": Role.BASELINE})
            self._studies[cell] = study
        return self._studies[cell]

    def _next_cell(self) -> str | None:
        # The enqueued baseline waits in the study until asked: it is not yet a trial handed out; nor is a lost one.
        asked = {c: sum(t.state != TrialState.WAITING and not t.user_attrs.get(LOST)
                        for t in self.study(c).get_trials(deepcopy=False)) for c in self.cells}
        open_cells = [c for c, n in asked.items() if n < self.search.trials_per_regime]
        return min(open_cells, key=lambda c: asked[c]) if open_cells else None

    def suggest(self, trial_id: str) -> dict | None:
        cell = self._next_cell()
        if cell is None:
            return Searcher.FINISHED
        study = self.study(cell)
        trial = study.ask()
        role = trial.user_attrs.get("role", Role.SEARCHED)
        overrides = get_space(self.search.space)(trial)
        if role == Role.BASELINE:
            overrides = baseline_overrides(self.base_dropout)
        trial.set_user_attr("overrides", overrides)
        self.live[trial_id] = (cell, trial.number)
        return self.cells[cell].suggestion(role=role, optuna_study=self.study_name(cell), optuna_trial=trial.number,
                                           overrides=overrides, seed=0).to_tune()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.memorization_max.update(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        cell, number = self.live.pop(trial_id)
        if result is not None:
            self.on_trial_result(trial_id, result)
            result = {**result, "memorization_max": self.memorization_max.get(trial_id)}
        state, values = trial_outcome(result, error, self.total_kimg, self.search.objective_names)
        study = self.study(cell)
        frozen = study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():
            return
        memorization_max = self.memorization_max.pop(trial_id)
        if self.search.max_memorization is not None and memorization_max is not None and state != TrialState.FAIL:
            # FrozenTrial._trial_id is Optuna's private field (no public way from a trial number to its Trial): optuna
            # is capped below its next major, and tests/test_search_objectives.py fails if this stops working.
            optuna.Trial(study, frozen._trial_id).set_constraint(
                MEMORIZATION_CONSTRAINT, memorization_max - self.search.max_memorization)
        study.tell(number, values if state == TrialState.COMPLETE else None, state=state)

    def close_orphans(self) -> int:
        """Mark trials still RUNNING in Optuna (their Tune trial is gone) as FAIL; returns how many."""
        closed = 0
        for cell in self.cells:
            study = self.study(cell)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                study.tell(trial.number, state=TrialState.FAIL)
                closed += 1
        return closed

    def get_state(self) -> dict:
        return {"live": dict(self.live), "memorization_max": dict(self.memorization_max.values)}

    def set_state(self, state: dict) -> None:
        self.live = dict(state["live"])
        self.memorization_max = RunningMax()
        self.memorization_max.values = dict(state.get("memorization_max", {}))
        self.release_lost_trials()

    def release_lost_trials(self) -> int:
        """Trials Optuna handed out that Tune's restored state does not hold (a driver killed between the two saves):
        failed and marked lost, so their cell asks again (a lost baseline is enqueued again). Else the phase would
        wait forever for a trial no one runs. Returns how many."""
        live = {tuple(value) for value in self.live.values()}
        lost = 0
        for cell in self.cells:
            study = self.study(cell)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if (cell, trial.number) in live:
                    continue
                optuna.Trial(study, trial._trial_id).set_user_attr(LOST, True)  # private id: see on_trial_complete
                study.tell(trial.number, state=TrialState.FAIL)
                if trial.user_attrs.get("role") == Role.BASELINE:
                    study.enqueue_trial(baseline_params(self.base_dropout), user_attrs={"role": Role.BASELINE})
                lost += 1
        return lost

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.get_state(), handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.set_state(pickle.load(handle))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_studies"] = {}  # storage engines do not pickle; reopened lazily
        return state
