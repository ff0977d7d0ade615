"""Fault injection for the tests: the driver stops, or is killed, at a named point, so a test acts exactly there.

`SCOREAUG_FAULT=<point>:<action>:<n>[,...]` acts the n-th time the driver passes `point`. The action is a signal
name (`SIGKILL`, `SIGTERM`, ...), sent to the driver's own process, or `HOLD`: the driver writes
`held-<point>-<n>` in `SCOREAUG_FAULT_DIR` and waits there until the test writes `go-<point>-<n>` (to stop a
tracking server under it, say). A test then waits for events (a file, the process's exit), never for a
duration, and cannot miss its window. Unset, a fault point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import time
from enum import StrEnum
from pathlib import Path

ENV = "SCOREAUG_FAULT"
DIR_ENV = "SCOREAUG_FAULT_DIR"
HOLD = "HOLD"


class FaultPoint(StrEnum):
    TRIAL_OPENED = "trial_opened"  # a trial's ledger line is written and its MLflow run made; Tune may not hold it
    RESULT_RECORDED = "result_recorded"  # an eval point is in the ledger; Tune's next checkpoint has not run
    REPORT_WRITING = "report_writing"  # results.parquet is written; the report beside it is not


_passes: dict[str, int] = {}


def fault_point(point: FaultPoint) -> None:
    """Act on every SCOREAUG_FAULT entry that names `point` at this, its n-th, pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _passes[point] = count = _passes.get(point, 0) + 1
    for entry in spec.split(","):
        name, action, n = entry.split(":")
        if name == point and int(n) == count:
            _hold(f"{point}-{count}") if action == HOLD else os.kill(os.getpid(), getattr(signal, action))


def _hold(label: str) -> None:
    folder = Path(os.environ[DIR_ENV])
    (folder / f"held-{label}").touch()
    while not (folder / f"go-{label}").exists():
        time.sleep(0.05)  # the test's event: it writes the file when it has acted
