"""The study's vocabulary, spelled once: phases, roles, how a trial ended, the metric registry, Optuna names.

The contracts of docs/design.md (metric names, MLflow layout) live here; the searcher, the tracker, the ledger,
the progress line, the report and the config read them from here, so none of them can drift from the others.
Phases, roles and statuses are StrEnums: they compare equal to, and persist as, the strings earlier studies wrote.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

from optuna.trial import TrialState

# ---------------------------------------------------------------- phases and roles


class Phase(StrEnum):
    ABLATION = "ablation"
    SEARCH = "search"
    CONFIRM = "confirm"
    DESIGN = "design"
    REPORT = "report"
    DONE = "done"


# The phases each kind of study runs, in order; the ones before REPORT run trials (each keeps a ledger).
PHASE_ORDER = {
    "ablation": (Phase.ABLATION, Phase.REPORT, Phase.DONE),
    "search": (Phase.SEARCH, Phase.CONFIRM, Phase.REPORT, Phase.DONE),
    "design": (Phase.DESIGN, Phase.REPORT, Phase.DONE),
    "searched-design": (Phase.SEARCH, Phase.DESIGN, Phase.REPORT, Phase.DONE),
}
TRIAL_PHASES = (Phase.ABLATION, Phase.SEARCH, Phase.CONFIRM, Phase.DESIGN)


def study_phases(kind: str) -> tuple[Phase, ...]:
    """The phases of a study kind (StudyConfig.kind), in the order they run."""
    return PHASE_ORDER[kind]


STATE_FILE = "study_state.json"  # the phase a study reached (driver/state.py writes it, the report reads it)


class Role(StrEnum):
    """A trial's role; an ablation's (and confirm.arms') roles are its arm names."""

    BASELINE = "baseline"
    SEARCHED = "search"
    BEST = "best"


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
CONTRACT_METRICS = EVAL_METRICS + SAMPLE_METRICS  # docs/design.md's per-eval-point names
SUPPORT_METRICS = ("fid_floor", "eval_seconds")  # read beside them (the real-vs-real floor, the eval's cost)
REPORTED_METRICS = CONTRACT_METRICS + SUPPORT_METRICS  # what the driver logs and records at each eval point
# Per trial, from its whole curve, on the driver when it ends (study/stats/scaling.py computes them).
CURVE_METRICS = ("memorization_max", "memorization_onset_kimg", "best_fid", "best_fid_kimg", "best_fid_test",
                 "best_fid_test_kimg", "test_loss_min_kimg")
COMPARED_METRICS = ("fid", "fid_test", "loss_gap", "memorization", "leakage")  # mean ± spread in every report table
# What a search can optimise (`search.metric`, `search.objectives`) and what ASHA can compare at each eval point.
OBJECTIVES = ("fid", "fid_test", "test_loss", "loss_gap", "memorization", "memorization_max")
SCHEDULER_METRICS = ("fid", "fid_test", "test_loss", "loss_gap")

# ---------------------------------------------------------------- how a trial ended

class Status(StrEnum):
    """How a trial ended (results.parquet writes `unfinished` for a trial that has not)."""

    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    DIVERGED = "diverged"
    FAILED = "failed"

    @property
    def failed(self) -> bool:
        return self in (Status.DIVERGED, Status.FAILED)


UNFINISHED = "unfinished"
OPTUNA_STATE = {Status.COMPLETED: TrialState.COMPLETE, Status.EARLY_STOPPED: TrialState.PRUNED,
                Status.DIVERGED: TrialState.FAIL, Status.FAILED: TrialState.FAIL}
MLFLOW_STATUS = {Status.COMPLETED: "FINISHED", Status.EARLY_STOPPED: "FINISHED", Status.DIVERGED: "FAILED",
                 Status.FAILED: "FAILED"}
# The keys of the one result a trial reports for a deterministic error (trainables/failures.py).
FAILURE_KEYS = ("kimg", "error_kind", "error", "diverged")


def trial_status(last_result: dict | None, errored: bool, total_kimg: float) -> Status:
    """The status of a trial from its last result and whether Tune saw it raise."""
    if errored or not last_result:
        return Status.FAILED
    kind = last_result.get("error_kind") or ("diverged" if last_result.get("diverged") else None)
    if kind:
        return Status.DIVERGED if kind == "diverged" else Status.FAILED
    return Status.EARLY_STOPPED if last_result.get("kimg", 0.0) < total_kimg - 1e-6 else Status.COMPLETED


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
                      for r in ended if Status(r["status"]).failed)
    return FailureSummary(len(ended), reasons)


def status_counts(statuses: list[str]) -> list[str]:
    """'N trials <status>' for every status, in the enum's order: the report's notes."""
    return [f"{statuses.count(status)} trials {status}" for status in Status]
