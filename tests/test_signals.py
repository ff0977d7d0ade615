"""SIGTERM stops the driver as SIGINT does, once, and within its grace even when the stop hangs (Ray gone under
the driver after `scancel`): the resume line, exit 130. A real process signals itself; the test waits for its exit."""

import os
import subprocess
import sys

from study.driver.signals import RESUME_LINE, STOP_GRACE_ENV
from tests.conftest import ROOT

HUNG_STOP = """
import signal, threading
from study.driver.signals import sigterm_as_sigint
stopping = threading.Event()
signal.signal(signal.SIGINT, lambda *_: stopping.set())  # a Tune run's handler: it only asks the loop to end
with sigterm_as_sigint():
    signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGTERM)  # scancel's, then the batch script's: the second is ignored
    assert stopping.is_set()
    threading.Event().wait()  # the loop never ends: Ray is gone
"""

QUICK_STOP = """
import signal, sys
from study.driver.signals import sigterm_as_sigint
try:
    with sigterm_as_sigint():
        signal.raise_signal(signal.SIGTERM)  # no Tune run: SIGINT's default handler raises KeyboardInterrupt
except KeyboardInterrupt:
    sys.exit(130)
"""


def _run(code: str, grace: str) -> subprocess.CompletedProcess:
    env = {**os.environ, STOP_GRACE_ENV: grace, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_a_stop_that_hangs_still_exits_130_with_the_resume_line_after_its_grace():
    result = _run(HUNG_STOP, "0.5")
    assert result.returncode == 130 and result.stderr.strip().splitlines()[-1] == RESUME_LINE, result.stderr


def test_sigterm_outside_a_tune_run_stops_as_ctrl_c_does():
    result = _run(QUICK_STOP, "3600")
    assert result.returncode == 130, result.stderr
