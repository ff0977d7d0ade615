"""Each trial's largest value of one metric so far: memorization_max, Gu et al.'s maximum over eval points, as the
searchers, the stop-when-decided scheduler and the progress line see it while trials run."""

from __future__ import annotations

import math


class RunningMax:
    """Per trial id, the largest finite value of `metric` among the results seen (plain dict state: it pickles)."""

    def __init__(self, metric: str = "memorization"):
        self.metric = metric
        self.values: dict[str, float] = {}

    def update(self, trial_id: str, result: dict) -> float | None:
        """Take one result into account; returns the trial's maximum so far (None before any finite value)."""
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.values[trial_id] = max(self.values.get(trial_id, value), float(value))
        return self.values.get(trial_id)

    def get(self, trial_id: str) -> float | None:
        return self.values.get(trial_id)

    def pop(self, trial_id: str) -> float | None:
        return self.values.pop(trial_id, None)

    @classmethod
    def of(cls, results, metric: str = "memorization") -> float | None:
        """The largest finite value of `metric` over one trial's results (its ledger history, say)."""
        running = cls(metric)
        for result in results:
            running.update("", result)
        return running.get("")
