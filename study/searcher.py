"""One Optuna study per data-limited regime, behind a single Ray Tune searcher.

Tune runs all regimes in one experiment (the cluster stays busy); this searcher hands out
trials regime by regime in turn and reports each result back to its own regime's Optuna study
(seeded TPE, persisted in an RDB storage). Trials that ASHA stopped early are told to Optuna
as PRUNED, diverged or failed ones as FAIL, so TPE never learns from partial-budget values.
"""

from __future__ import annotations

import math
import pickle

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search_spaces.spaces import baseline_params, get_space

BASELINE = "baseline"
SEARCH = "search"


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})


def open_regime_study(storage_url: str, study_name: str, seed: int) -> optuna.Study:
    return optuna.create_study(
        study_name=study_name,
        storage=optuna_storage(storage_url),
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=3),
        direction="minimize",
        load_if_exists=True,
    )


def trial_outcome(result: dict | None, error: bool, total_kimg: float, metric: str) -> tuple[TrialState, float | None]:
    """How a finished Tune trial is told to Optuna."""
    if error or not result or result.get("diverged"):
        return TrialState.FAIL, None
    if result.get("kimg", 0.0) < total_kimg - 1e-6:
        return TrialState.PRUNED, None
    value = result.get(metric)
    if value is None or not math.isfinite(value):
        return TrialState.FAIL, None
    return TrialState.COMPLETE, float(value)


class RegimeSearcher(Searcher):
    """Round-robin over regimes; `trials_per_regime` asks per regime, the first of each being the baseline."""

    def __init__(self, regimes: dict[str, float], space: str, storage_url: str, study_prefix: str,
                 trials_per_regime: int, seed: int, metric: str, base_dropout: float, total_kimg: float):
        # No metric for Tune: it would demand the objective in every result, but FID arrives only at the end.
        super().__init__(metric=None, mode=None)
        self.objective = metric
        self.regimes = regimes
        self.space = space
        self.storage_url = storage_url
        self.study_prefix = study_prefix
        self.trials_per_regime = trials_per_regime
        self.seed = seed
        self.base_dropout = base_dropout
        self.total_kimg = total_kimg
        self.live: dict[str, tuple[str, int]] = {}
        self._studies: dict[str, optuna.Study] = {}

    def study_name(self, regime: str) -> str:
        return f"{self.study_prefix}-{regime}"

    def study(self, regime: str) -> optuna.Study:
        if regime not in self._studies:
            index = list(self.regimes).index(regime)
            study = open_regime_study(self.storage_url, self.study_name(regime), self.seed + index)
            if not study.trials:  # a resumed study already holds its baseline: never enqueue it twice
                study.enqueue_trial(baseline_params(self.base_dropout), user_attrs={"role": BASELINE})
            self._studies[regime] = study
        return self._studies[regime]

    def _next_regime(self) -> str | None:
        # The enqueued baseline waits in the study until asked: it is not yet a trial handed out.
        asked = {r: sum(t.state != TrialState.WAITING for t in self.study(r).get_trials(deepcopy=False)) for r in self.regimes}
        open_regimes = [r for r, n in asked.items() if n < self.trials_per_regime]
        return min(open_regimes, key=lambda r: asked[r]) if open_regimes else None

    def suggest(self, trial_id: str) -> dict | None:
        regime = self._next_regime()
        if regime is None:
            return Searcher.FINISHED
        study = self.study(regime)
        trial = study.ask()
        role = trial.user_attrs.get("role", SEARCH)
        overrides = get_space(self.space)(trial)
        if role == BASELINE:
            overrides = {"score_augment.p": 0.0, "clean_augment.p": 0.0, "model.dropout": self.base_dropout}
        trial.set_user_attr("overrides", overrides)
        self.live[trial_id] = (regime, trial.number)
        return {"regime": regime, "regime_fraction": self.regimes[regime], "role": role,
                "optuna_study": self.study_name(regime), "optuna_trial": trial.number, "overrides": overrides, "seed": 0}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        regime, number = self.live.pop(trial_id)
        state, value = trial_outcome(result, error, self.total_kimg, self.objective)
        study = self.study(regime)
        if study.get_trials(deepcopy=False)[number].state.is_finished():
            return
        study.tell(number, value if state == TrialState.COMPLETE else None, state=state)

    def close_orphans(self) -> int:
        """Mark trials still RUNNING in Optuna (their Tune trial is gone) as FAIL; returns how many."""
        closed = 0
        for regime in self.regimes:
            study = self.study(regime)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                study.tell(trial.number, state=TrialState.FAIL)
                closed += 1
        return closed

    def get_state(self) -> dict:
        return {"live": dict(self.live)}

    def set_state(self, state: dict) -> None:
        self.live = dict(state["live"])

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
