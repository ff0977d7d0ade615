"""Fault injection for the tests: the driver signals itself at a named point, so a test kills it exactly there.

`SCOREAUG_FAULT=<point>:<SIGNAL>[:<n>]` (e.g. `trial_opened:SIGKILL:2`) sends SIGNAL to the driver's own process
the n-th time (default 1) it passes `point`. A kill test then waits for an event (the process's exit), never for a
duration, and cannot miss its window. Unset, a fault point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from enum import StrEnum

ENV = "SCOREAUG_FAULT"


class FaultPoint(StrEnum):
    TRIAL_OPENED = "trial_opened"  # a trial's ledger line is written and its MLflow run made; Tune may not hold it
    RESULT_RECORDED = "result_recorded"  # an eval point is in the ledger; Tune's next checkpoint has not run
    REPORT_WRITING = "report_writing"  # results.parquet is written; the report beside it is not


_passes: dict[str, int] = {}


def fault_point(point: FaultPoint) -> None:
    """Signal this process if SCOREAUG_FAULT names `point` and this is its n-th pass."""
    spec = os.environ.get(ENV)
    if not spec or not spec.startswith(f"{point}:"):
        return
    _, name, *count = spec.split(":")
    _passes[point] = _passes.get(point, 0) + 1
    if _passes[point] == int(count[0] if count else 1):
        os.kill(os.getpid(), getattr(signal, name))
