"""Which trial errors are faults worth a retry, and how the others are reported instead of raised.

A retry helps when a process or node died: the trial resumes from its checkpoint. It cannot help a config
that does not build, data that does not load, a loss that went to NaN, or a bug: those fail the same way
every time, so the trial reports the error once and ends, and the study goes on without wasting restarts.
"""

from __future__ import annotations

from pydantic import ValidationError

from trainables.checkpoint import CheckpointError
from trainables.config_io import ConfigError
from trainables.data import DatasetError
from trainables.loop import TrainingDiverged

# Most specific first: the first match names the kind.
DETERMINISTIC_ERRORS: dict[type[BaseException], str] = {
    TrainingDiverged: "diverged",
    ConfigError: "config",
    ValidationError: "config",
    DatasetError: "data",
    CheckpointError: "checkpoint",
    # Programming and value errors: a retry replays the same code on the same inputs.
    ValueError: "error",
    TypeError: "error",
    KeyError: "error",
    IndexError: "error",
    AttributeError: "error",
    NotImplementedError: "error",
    AssertionError: "error",
    ZeroDivisionError: "error",
}


def deterministic_kind(err: BaseException) -> str | None:
    """The kind of a deterministic error ('config', 'data', ...); None for a fault worth retrying."""
    return next((kind for cls, kind in DETERMINISTIC_ERRORS.items() if isinstance(err, cls)), None)


def failure_report(err: BaseException, kind: str) -> dict:
    """The one result a trial reports for a deterministic error, at the kimg where it happened when the error
    knows it (else 0: the driver records a failure whatever its kimg, and never logs it as an eval point)."""
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if kind == "error":
        message = f"{type(err).__name__}: {message}"
    report = {"kimg": float(getattr(err, "kimg", 0.0)), "error_kind": kind, "error": message[:500]}
    if kind == "diverged":
        report["diverged"] = 1.0
    return report
