"""How a trial ended, in one vocabulary for the searcher (Optuna), the tracker (MLflow) and the progress line.

A trial either ran its whole budget (`completed`), was stopped early by the scheduler (`early_stopped`),
hit a non-finite loss (`diverged`) or could not run (`failed`: a deterministic error it reported, or an
error Tune gave up on after its retries). Only completed trials carry final values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from optuna.trial import TrialState

COMPLETED, EARLY_STOPPED, DIVERGED, FAILED = "completed", "early_stopped", "diverged", "failed"
STATUSES = (COMPLETED, EARLY_STOPPED, DIVERGED, FAILED)
OPTUNA_STATE = {COMPLETED: TrialState.COMPLETE, EARLY_STOPPED: TrialState.PRUNED, DIVERGED: TrialState.FAIL,
                FAILED: TrialState.FAIL}
MLFLOW_STATUS = {COMPLETED: "FINISHED", EARLY_STOPPED: "FINISHED", DIVERGED: "FAILED", FAILED: "FAILED"}
# The keys of the one result a trial reports for a deterministic error (trainables/failures.py).
FAILURE_KEYS = ("kimg", "error_kind", "error", "diverged")


def trial_status(last_result: dict | None, errored: bool, total_kimg: float) -> str:
    """The status of a trial from its last result and whether Tune saw it raise."""
    if errored or not last_result:
        return FAILED
    kind = last_result.get("error_kind") or ("diverged" if last_result.get("diverged") else None)
    if kind:
        return DIVERGED if kind == "diverged" else FAILED
    return EARLY_STOPPED if last_result.get("kimg", 0.0) < total_kimg - 1e-6 else COMPLETED


@dataclass(frozen=True)
class FailureSummary:
    """Trials that ended and those that failed (diverged included), grouped by reason."""

    ended: int
    reasons: Counter

    @property
    def failed(self) -> int:
        return sum(self.reasons.values())

    def line(self) -> str:
        if not self.failed:
            return f"all {self.ended} trials ran"
        groups = "; ".join(f"{n} x {reason}" for reason, n in self.reasons.most_common())
        return f"{self.failed} of {self.ended} trials failed: {groups}"

    def too_many(self, max_fraction: float) -> bool:
        """Whether the study as a whole failed: no trial ran, or more than `max_fraction` of them failed."""
        return self.ended > 0 and (self.failed == self.ended or self.failed > max_fraction * self.ended)


def summarize_failures(records: list[dict]) -> FailureSummary:
    ended = [r for r in records if r.get("status")]
    reasons = Counter(f"{r['status']}: {r.get('reason') or 'no reason recorded'}"[:160]
                      for r in ended if r["status"] in (DIVERGED, FAILED))
    return FailureSummary(len(ended), reasons)
