"""A concise live view of a study: per cell, trials done / running / stopped early, time, and what the study
measures: memorization per arm in a scaling study (training-set sizes), else the best value of the search metric."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from ray.tune import Callback

from study.config import StudyConfig
from study.contract import Status, trial_status
from study.phases.suggestion import Suggestion
from study.stats.running_max import RunningMax
from study.tracking.ledger import Ledger


class ProgressCallback(Callback):
    def __init__(self, phase: str, total_trials: int, metric: str, total_kimg: float, mode: str = "min",
                 ledger_path: Path | None = None):
        self.phase, self.total, self.metric, self.total_kimg = phase, total_trials, metric, total_kimg
        self.ledger_path = ledger_path
        self.better = min if mode == "min" else max
        self.started = time.time()
        self.running: dict[str, str] = {}
        self.finished: dict[str, dict] = {}
        self.best: dict[str, float] = {}
        self.memorization: dict[str, dict[str, list[float]]] = {}  # cell -> arm -> each ended trial's maximum
        self._maxima = RunningMax()

    @classmethod
    def for_study(cls, config: StudyConfig, spec, ledger_path: Path | None = None) -> ProgressCallback:
        """A scaling study (sizes as image counts, or placed by a design) shows memorization per arm; a search its metric."""
        metric = "memorization" if isinstance(config.regimes, dict) or config.design else config.search.objective_names[0]
        return cls(spec.phase, spec.trials, metric, config.trial.train.total_kimg, config.search.mode, ledger_path)

    def setup(self, **info):
        """At the start of every Tune run of the phase, a resumed one included (Tune restores this callback as it was
        built, before any trial): the trials that ended before, from the ledger, so the counts cover the phase."""
        if self.ledger_path is None:
            return
        for trial_id, record in Ledger(self.ledger_path).records.items():
            if record.get("status") and trial_id not in self.finished:
                self._count(trial_id, Suggestion.from_tune(record["suggestion"]), Status(record["status"]),
                            RunningMax.of(record["history"]))

    def _cell_line(self, cell: str) -> str:
        outcomes = [f["status"] for f in self.finished.values() if f["cell"] == cell]
        failed = sum(status.failed for status in outcomes)
        line = (f"{cell}: {len(outcomes)} done ({outcomes.count(Status.EARLY_STOPPED)} stopped"
                + (f", {failed} failed" if failed else "") + f"), {sum(1 for c in self.running.values() if c == cell)} running")
        if self.metric == "memorization":
            arms = self.memorization.get(cell, {})
            return line + "".join(f", {arm} copies {sum(v) / len(v):.2f}" for arm, v in sorted(arms.items()))
        best = self.best.get(cell)
        return line + (f", best {self.metric} {best:.4g}" if best is not None else "")

    def _line(self) -> str:
        elapsed = time.time() - self.started
        done = len(self.finished)
        eta = f", about {elapsed / done * (self.total - done) / 60:.1f} min left" if done else ""
        cells = sorted({*self.running.values(), *(f["cell"] for f in self.finished.values())})
        return f"[{self.phase} {done}/{self.total} | {elapsed / 60:.1f} min{eta}] " + " | ".join(map(self._cell_line, cells))

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.trial_id] = Suggestion.from_tune(trial.config).cell

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric == "memorization":
            self._maxima.update(trial.trial_id, result)
            return
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            cell = Suggestion.from_tune(trial.config).cell
            self.best[cell] = self.better(self.best.get(cell, value), value)

    def _count(self, trial_id: str, suggestion: Suggestion, status: Status, maximum: float | None) -> None:
        self.finished[trial_id] = {"cell": suggestion.cell, "status": status}
        if maximum is not None:
            self.memorization.setdefault(suggestion.cell, {}).setdefault(suggestion.role, []).append(maximum)

    def _end(self, trial, errored: bool) -> None:
        self.running.pop(trial.trial_id, None)
        status = trial_status(trial.last_result, errored, self.total_kimg)
        self._count(trial.trial_id, Suggestion.from_tune(trial.config), status, self._maxima.pop(trial.trial_id))
        print(self._line(), file=sys.stdout, flush=True)  # looked up per call: Tune pickles callbacks

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, errored=True)
