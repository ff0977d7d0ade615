"""SIGTERM stops a study as SIGINT does: Tune saves its experiment, the driver exits 130 and says to --resume.

SIGTERM is how clusters stop programs: Slurm's `scancel` and time limit, systemd, `docker stop`, `kill`. Ray's
driver handler for it exits mid-loop (exit 15, often a C++ stack dump and 134), before Tune saves anything. Here
the first SIGTERM is handed to whatever handles SIGINT at that moment: inside a Tune run that is Tune's handler,
which ends the run after saving its state; elsewhere it raises KeyboardInterrupt, which run.py turns into exit 130.
Later SIGTERMs are ignored: `scancel` signals every process of the job and the batch script passes the signal on,
so the driver may get it twice, and a second SIGINT would skip Tune's save.

A SIGTERM also starts a clock: a driver that has not exited `SCOREAUG_STOP_GRACE_S` (60) seconds later says how to
resume and exits 130 at once. `scancel` stops Ray's own processes too, and a driver whose Ray is gone would wait a
minute for it and then die with exit 1; what Tune could not save, the resumed study re-runs (tracking/lost.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

RESUME_LINE = "interrupted; continue with: python study/run.py --resume (same config)"
STOP_GRACE_ENV = "SCOREAUG_STOP_GRACE_S"
DEFAULT_STOP_GRACE_S = 60.0
INTERRUPTED_EXIT = 130


def _give_up() -> None:
    """The stop took longer than its grace (Ray gone under the driver, say): the resume line, then exit 130."""
    print(RESUME_LINE, file=sys.stderr, flush=True)
    os._exit(INTERRUPTED_EXIT)


def _start_stop_clock() -> None:
    clock = threading.Timer(float(os.environ.get(STOP_GRACE_ENV, DEFAULT_STOP_GRACE_S)), _give_up)
    clock.daemon = True
    clock.start()


def _main_thread() -> bool:
    """Only the main thread may set signal handlers (a study run from another thread keeps Python's)."""
    return threading.current_thread() is threading.main_thread()


def forward_sigterm() -> None:
    """Install the handler (again: `ray.init` puts its own in place)."""
    if not _main_thread():
        return
    received = []

    def as_sigint(signum, frame):
        if received:
            return
        received.append(signum)
        _start_stop_clock()
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIG_IGN or SIG_DFL: nothing of ours handles SIGINT, so stop as Ctrl-C does
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    signal.signal(signal.SIGTERM, as_sigint)


@contextmanager
def tune_handlers_removed_after():
    """Around a Tune run: Tune installs SIGINT and SIGUSR1 handlers that end *its* loop and leaves them installed
    when it returns, so a Ctrl-C (or SIGTERM) during the report or between phases would set a flag nobody reads.
    The handlers from before come back once the run returns."""
    if not _main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@contextmanager
def sigterm_as_sigint():
    """While the study runs, SIGTERM stops it as SIGINT does; the handler before is put back after."""
    previous = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    forward_sigterm()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
