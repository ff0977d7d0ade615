"""Confirmation: re-run each regime's best ScoreAug config and its baseline with fresh training seeds.

Small FID differences are within seed noise; only a difference larger than the seed spread is
reported as one. A fixed list of suggestions is handed to Tune through a trivial searcher, so the
same trainable, callbacks and resume logic serve both phases.
"""

from __future__ import annotations

import pickle

from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from study.phases.cells import Cell
from study.phases.suggestion import Suggestion
from study.config import ConfirmConfig, SearchConfig
from study.stats.scaling import non_dominated
from study.contract import Role, baseline_overrides, study_name
from study.phases.searcher import load_regime_study


def _violation(trial: FrozenTrial) -> float:
    return sum(max(v, 0.0) for v in trial.constraints.values())


def pareto_optimal(trials: list[FrozenTrial], mode: str) -> list[FrozenTrial]:
    """The trials no other trial dominates (every objective at least as good, one better)."""
    return [t for t, optimal in zip(trials, non_dominated([t.values for t in trials], mode)) if optimal]


def pick_confirmed(trials: list[FrozenTrial], search: SearchConfig, pick_by: str | None) -> tuple[FrozenTrial | None, str]:
    """The searched trial to confirm, and a note when the rule had to bend.

    Among completed searched trials: the feasible ones (constraint met; if none is, the least infeasible, noted),
    then in a multi-objective search the Pareto-optimal ones, then the best in `pick_by` (default: first objective)."""
    searched = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("role") != Role.BASELINE]
    if not searched:
        return None, "no ScoreAug trial completed its full budget; no searched config to confirm"
    note = ""
    least = min(_violation(t) for t in searched)
    candidates = [t for t in searched if _violation(t) <= least]
    if least > 0:
        note = (f"no searched trial met memorization_max <= {search.max_memorization:g}; confirming the least "
                f"infeasible (memorization_max {least + search.max_memorization:.3g})")
    if len(search.objective_names) > 1:
        candidates = pareto_optimal(candidates, search.mode)
    index = search.objective_names.index(pick_by or search.objective_names[0])
    choose = min if search.mode == "min" else max
    return choose(candidates, key=lambda t: t.values[index]), note


def picked_overrides(cell: Cell, storage_url: str, study_prefix: str, search: SearchConfig,
                     pick_by: str | None) -> tuple[dict | None, str]:
    """The overrides of the cell's picked searched trial (pick_confirmed), and the note when the rule had to bend."""
    trials = load_regime_study(storage_url, study_name(study_prefix, cell.name)).get_trials(deepcopy=False)
    best, note = pick_confirmed(trials, search, pick_by)
    return (dict(best.user_attrs["overrides"]) if best is not None else None), note


def confirmation_suggestions(cells: list[Cell], storage_url: str, study_prefix: str, confirm: ConfirmConfig,
                             search: SearchConfig, base_dropout: float) -> tuple[list[Suggestion], list[str]]:
    """Per cell: the picked ScoreAug trial, the baseline and each fixed arm (`confirm.arms`), each with
    `confirm.seeds` fresh seeds. A cell without a picked trial confirms its baseline only beside fixed arms."""
    suggestions, notes = [], []
    for cell in cells:
        name = study_name(study_prefix, cell.name)
        best, note = pick_confirmed(load_regime_study(storage_url, name).get_trials(deepcopy=False), search, confirm.pick_by)
        if note:
            notes.append(f"{cell.name}: {note}")
        arms = [(Role.BEST, best.user_attrs["overrides"], best.number)] if best is not None else []
        if arms or confirm.arms:
            arms.append((Role.BASELINE, baseline_overrides(base_dropout), None))
        arms += [(arm, dict(overrides), None) for arm, overrides in confirm.arms.items()]
        for role, overrides, source in arms:
            for k in range(confirm.seeds):
                suggestions.append(cell.suggestion(role=role, optuna_study=name, optuna_trial=source, overrides=overrides,
                                                   seed=confirm.seed_offset + k))
    return suggestions, notes


class FixedSearcher(Searcher):
    """Hands out a fixed list of suggestions, once each, across resumes."""

    def __init__(self, suggestions: list[Suggestion]):
        super().__init__(metric=None, mode=None)
        self.suggestions = suggestions
        self.next_index = 0

    def suggest(self, trial_id: str):
        if self.next_index >= len(self.suggestions):
            return Searcher.FINISHED
        self.next_index += 1
        return self.suggestions[self.next_index - 1].to_tune()

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"next_index": self.next_index}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.next_index = pickle.load(handle)["next_index"]
