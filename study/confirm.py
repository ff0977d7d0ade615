"""Confirmation: re-run each regime's best ScoreAug config and its baseline with fresh training seeds.

Small FID differences are within seed noise; only a difference larger than the seed spread is
reported as one. A fixed list of suggestions is handed to Tune through a trivial searcher, so the
same trainable, callbacks and resume logic serve both phases.
"""

from __future__ import annotations

import pickle

from optuna.trial import TrialState
from ray.tune.search import Searcher

from study.searcher import BASELINE, open_regime_study


def confirmation_suggestions(regimes: dict[str, float], storage_url: str, study_prefix: str, seeds: int,
                             seed_offset: int, base_dropout: float) -> tuple[list[dict], list[str]]:
    """Per regime: the best completed ScoreAug trial and the baseline, each with `seeds` fresh seeds."""
    suggestions, notes = [], []
    for index, (regime, fraction) in enumerate(regimes.items()):
        study = open_regime_study(storage_url, f"{study_prefix}-{regime}", 0)
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        searched = [t for t in complete if t.user_attrs.get("role") != BASELINE]
        if not searched:
            notes.append(f"{regime}: no ScoreAug trial completed its full budget; nothing to confirm")
            continue
        best = min(searched, key=lambda t: t.value)
        baseline = {"score_augment.p": 0.0, "clean_augment.p": 0.0, "model.dropout": base_dropout}
        for role, overrides, source in (("best", best.user_attrs["overrides"], best.number), (BASELINE, baseline, None)):
            for k in range(seeds):
                suggestions.append({"regime": regime, "regime_fraction": fraction, "role": role, "optuna_study": study.study_name,
                                    "optuna_trial": source, "overrides": overrides, "seed": seed_offset + k})
    return suggestions, notes


class FixedSearcher(Searcher):
    """Hands out a fixed list of suggestions, once each, across resumes."""

    def __init__(self, suggestions: list[dict]):
        super().__init__(metric=None, mode=None)
        self.suggestions = suggestions
        self.next_index = 0

    def suggest(self, trial_id: str):
        if self.next_index >= len(self.suggestions):
            return Searcher.FINISHED
        self.next_index += 1
        return self.suggestions[self.next_index - 1]

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"next_index": self.next_index}, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.next_index = pickle.load(handle)["next_index"]
