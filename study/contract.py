"""The study's vocabulary, spelled once: phases, roles, how a trial ended, the metric registry, Optuna names.

DESIGN.md's contracts (metric names, MLflow layout) live here; the searcher, the tracker, the ledger, the
progress line, the report and the config read them from here, so none of them can drift from the others.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from optuna.trial import TrialState

# ---------------------------------------------------------------- phases and roles

PHASES = ("ablation", "search", "confirm")  # in the order a study runs them (an ablation instead of the other two)
BASELINE, SEARCHED, BEST = "baseline", "search", "best"  # a trial's role; an ablation's roles are its arm names


def baseline_params(base_dropout: float) -> dict:
    """The Optuna params of the plain-EDM baseline: no ScoreAug, no clean-data augmentation."""
    return {"score_augment.p": 0.0, "model.dropout": base_dropout, "clean_augment.enabled": False}


def baseline_overrides(base_dropout: float) -> dict:
    """The trial config overrides of the plain-EDM baseline (what `baseline_params` mean as config)."""
    return {"score_augment.p": 0.0, "clean_augment.p": 0.0, "model.dropout": base_dropout}


def study_name(prefix: str, cell: str) -> str:
    """The Optuna study of one cell: the study's name and the cell's."""
    return f"{prefix}-{cell}"


# ---------------------------------------------------------------- metrics

EVAL_METRICS = ("kimg", "train_loss", "test_loss", "loss_gap", "img_per_sec")  # every eval point
SAMPLE_METRICS = ("fid", "fid_test", "leakage", "memorization")  # where sample metrics run (`eval.fid_at`)
CONTRACT_METRICS = EVAL_METRICS + SAMPLE_METRICS  # DESIGN.md's per-eval-point names
SUPPORT_METRICS = ("fid_floor", "eval_seconds")  # read beside them (the real-vs-real floor, the eval's cost)
REPORTED_METRICS = CONTRACT_METRICS + SUPPORT_METRICS  # what the driver logs and records at each eval point
# Per trial, from its whole curve, on the driver when it ends (study/scaling.py computes them).
CURVE_METRICS = ("memorization_max", "memorization_onset_kimg", "best_fid", "best_fid_kimg", "best_fid_test",
                 "best_fid_test_kimg", "test_loss_min_kimg")
COMPARED_METRICS = ("fid", "fid_test", "loss_gap", "memorization", "leakage")  # mean ± spread in every report table
# What a search can optimise (`search.metric`, `search.objectives`) and what ASHA can compare at each eval point.
OBJECTIVES = ("fid", "fid_test", "test_loss", "loss_gap", "memorization", "memorization_max")
SCHEDULER_METRICS = ("fid", "fid_test", "test_loss", "loss_gap")

# ---------------------------------------------------------------- how a trial ended

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
