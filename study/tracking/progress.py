"""A concise live view of a study: per regime, trials done / running / stopped early, best value, time."""

from __future__ import annotations

import sys
import time

from ray.tune import Callback

from study.phases.suggestion import Suggestion
from study.contract import DIVERGED, EARLY_STOPPED, FAILED, trial_status


class ProgressCallback(Callback):
    def __init__(self, phase: str, total_trials: int, metric: str, total_kimg: float, mode: str = "min"):
        self.phase = phase
        self.total = total_trials
        self.metric = metric
        self.better = min if mode == "min" else max
        self.total_kimg = total_kimg
        self.started = time.time()
        self.running: dict[str, str] = {}
        self.finished: dict[str, dict] = {}
        self.best: dict[str, float] = {}

    def _line(self) -> str:
        elapsed = time.time() - self.started
        done = len(self.finished)
        eta = f", about {elapsed / done * (self.total - done) / 60:.1f} min left" if done else ""
        regimes = sorted({*self.running.values(), *(f["regime"] for f in self.finished.values())})
        parts = []
        for regime in regimes:
            outcomes = [f["status"] for f in self.finished.values() if f["regime"] == regime]
            failed = outcomes.count(FAILED) + outcomes.count(DIVERGED)
            best = self.best.get(regime)
            parts.append(f"{regime}: {len(outcomes)} done ({outcomes.count(EARLY_STOPPED)} stopped"
                         + (f", {failed} failed" if failed else "") + "), "
                         f"{sum(1 for r in self.running.values() if r == regime)} running"
                         + (f", best {self.metric} {best:.4g}" if best is not None else ""))
        return f"[{self.phase} {done}/{self.total} | {elapsed / 60:.1f} min{eta}] " + " | ".join(parts)

    def _print(self) -> None:
        print(self._line(), file=sys.stdout, flush=True)  # looked up per call: Tune pickles callbacks

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.trial_id] = Suggestion.from_tune(trial.config).cell

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, float) and value == value:
            regime = Suggestion.from_tune(trial.config).cell
            self.best[regime] = self.better(self.best.get(regime, value), value)

    def _end(self, trial, errored: bool) -> None:
        regime = self.running.pop(trial.trial_id, None) or Suggestion.from_tune(trial.config).cell
        status = trial_status(trial.last_result, errored, self.total_kimg)
        self.finished[trial.trial_id] = {"regime": regime, "status": status}
        self._print()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, errored=True)
