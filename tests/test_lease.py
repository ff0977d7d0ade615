"""One driver per study folder: a second driver is refused, in one line naming the holder, and changes nothing; a
dead driver's lease is taken over; the lease goes with its holder's exit and is kept alive by its heartbeat."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from study.driver.lease import LEASE_FILE, TTL_ENV, Holder, StudyLease, StudyLocked
from tests.conftest import ROOT


def _listing(folder) -> dict:
    """Every entry of the folder with its modification time and size, and the folder's own modification time."""
    entries = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}
    return {**entries, ".": folder.stat().st_mtime_ns}


def _poll(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def _lease(folder, host: str, heartbeat_age: float) -> None:
    now = time.time()
    holder = {"host": host, "pid": 4242, "started": now - 3600, "heartbeat": now - heartbeat_age, "token": "theirs"}
    (folder / LEASE_FILE).write_text(json.dumps(holder))


def test_a_second_driver_is_refused_in_one_line_and_changes_nothing(tmp_path):
    (tmp_path / "trials_search.jsonl").write_text("{}\n")
    with StudyLease(tmp_path, ttl_s=30):
        before = _listing(tmp_path)
        with pytest.raises(StudyLocked) as refused:
            with StudyLease(tmp_path, ttl_s=30):
                pytest.fail("a second driver got the lease")
        assert _listing(tmp_path) == before
    message = str(refused.value)
    assert "\n" not in message and isinstance(refused.value, RuntimeError)
    assert f"the driver on {socket.gethostname()} (pid {os.getpid()}) since " in message
    assert "--resume" in message and "--output" in message
    assert not (tmp_path / LEASE_FILE).exists()



def test_study_run_refuses_a_folder_whose_driver_is_running(tmp_path):
    """`python study/run.py --resume` on a folder another driver holds: exit 2, one line naming the holder, and the
    folder (listing, sizes, modification times) exactly as it was."""
    (tmp_path / "study_state.json").write_text(json.dumps({"name": "demo", "fingerprint": "x", "phase": "design"}))
    # No heartbeat while the refused driver runs (on a loaded machine it may take longer than one): the listing
    # must not change because of the holder's own renewal.
    with StudyLease(tmp_path, ttl_s=30, heartbeat_s=3600):
        before = _listing(tmp_path)
        result = subprocess.run([sys.executable, "study/run.py", "--output", str(tmp_path), "--resume"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert _listing(tmp_path) == before
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and f"(pid {os.getpid()})" in lines[0], lines[0]

def test_a_killed_drivers_lease_is_taken_over_at_once(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from study.driver.lease import StudyLease; "
         "StudyLease(sys.argv[1], ttl_s=600).__enter__(); print('held', flush=True); time.sleep(600)", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyLocked, match=f"pid {holder.pid}"):
            StudyLease(tmp_path, ttl_s=600).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    notes = []
    with StudyLease(tmp_path, ttl_s=600, log=notes.append) as lease:  # same host, its process gone: no TTL to wait
        assert Holder.read(tmp_path / LEASE_FILE).token == lease.token
    assert len(notes) == 1
    assert f"took over the stale lease of the driver on {socket.gethostname()} (pid {holder.pid})" in notes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary left behind


def test_a_lease_without_a_heartbeat_for_the_ttl_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv(TTL_ENV, "2")
    _lease(tmp_path, "elsewhere", heartbeat_age=1)
    with pytest.raises(StudyLocked, match="the driver on elsewhere \\(pid 4242\\)"):
        StudyLease(tmp_path).acquire()
    _lease(tmp_path, "elsewhere", heartbeat_age=5)
    with StudyLease(tmp_path) as lease:
        assert Holder.read(tmp_path / LEASE_FILE).token == lease.token


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_the_lease_is_released_when_the_driver_fails(tmp_path, error):
    with pytest.raises(error):
        with StudyLease(tmp_path, ttl_s=30):
            assert (tmp_path / LEASE_FILE).exists()
            raise error()
    assert not (tmp_path / LEASE_FILE).exists()
    with StudyLease(tmp_path, ttl_s=30):  # the next driver simply takes it
        pass


def test_the_heartbeat_renews_and_a_lease_taken_over_is_never_removed(tmp_path):
    path = tmp_path / LEASE_FILE
    with StudyLease(tmp_path, ttl_s=30, heartbeat_s=0.05) as lease:
        first = Holder.read(path)
        assert _poll(lambda: Holder.read(path).heartbeat > first.heartbeat)
        assert Holder.read(path).started == first.started and Holder.read(path).token == lease.token

        def take_over() -> bool:
            """Another driver takes the lease over (this one stalled past the TTL); again if a renewal already under
            way replaced it, the window that a lease without flock cannot close."""
            if Holder.read(path).token != "theirs":
                _lease(tmp_path, "elsewhere", heartbeat_age=0)
            return False

        assert _poll(lambda: lease.lost is not None or take_over()) and lease.lost.host == "elsewhere"
    assert Holder.read(path).token == "theirs"  # not ours to remove


def _holder_fields(**changes) -> dict:
    now = time.time()
    return {"host": "elsewhere", "pid": 4242, "started": now - 3600, "heartbeat": now, "token": "theirs", **changes}


@pytest.mark.parametrize("content, problem", [
    (json.dumps(_holder_fields(pid="abc")), 'pid is "abc", not an integer'),
    (json.dumps(_holder_fields(heartbeat="soon")), 'heartbeat is "soon", not a finite number'),
    (json.dumps(_holder_fields(started=True)), "started is true, not a finite number"),
    (json.dumps(_holder_fields(host=7)), "host is 7, not a string"),
    (json.dumps(_holder_fields(heartbeat=float("nan"))), "heartbeat is NaN, not a finite number"),
    (json.dumps({k: v for k, v in _holder_fields(owner="me").items() if k != "token"}), "fields missing: token; unknown: owner"),
    (json.dumps([1, 2]), "holds [1, 2], not a JSON object"),
    ("{not json", "not JSON"),
], ids=["pid", "heartbeat", "bool", "host", "nan", "fields", "list", "torn"])
def test_a_malformed_lease_is_refused_in_one_line_naming_the_problem_and_the_way_out(tmp_path, content, problem):
    """Refused while fresh (its file's modification time stands for the heartbeat), taken over once stale."""
    path = tmp_path / LEASE_FILE
    path.write_text(content)
    with pytest.raises(StudyLocked) as refused:
        StudyLease(tmp_path, ttl_s=30).acquire()
    message = str(refused.value)
    assert "\n" not in message and f"a driver that left an unusable lease ({problem}), written " in message
    assert message.endswith(f"if no driver runs on this folder, remove {path})")
    assert path.read_text() == content
    os.utime(path, (time.time() - 31, time.time() - 31))
    notes = []
    with StudyLease(tmp_path, ttl_s=30, log=notes.append) as lease:
        assert Holder.read(path).token == lease.token and problem in notes[0]


def test_a_heartbeat_beyond_the_ttl_in_the_future_is_stale(tmp_path):
    """Within the TTL either side of now a heartbeat is live (hosts keep their clocks that close); further in the
    future it is a wrong clock or a forged file, and the lease is taken over instead of held for as long as it says."""
    _lease(tmp_path, "elsewhere", heartbeat_age=-20)
    with pytest.raises(StudyLocked, match=r"heartbeat \d+ s in the future; .*remove "):
        StudyLease(tmp_path, ttl_s=30).acquire()
    _lease(tmp_path, "elsewhere", heartbeat_age=-365 * 86400)
    notes = []
    with StudyLease(tmp_path, ttl_s=30, log=notes.append) as lease:
        assert Holder.read(tmp_path / LEASE_FILE).token == lease.token
    assert "the driver on elsewhere (pid 4242)" in notes[0] and "in the future" in notes[0]
