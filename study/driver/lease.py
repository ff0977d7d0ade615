"""One driver per study folder: a lease file that a second driver finds and is refused by, and that the successor
of a dead driver takes over.

No flock (NFS ignores or fakes it): the lease, `<output>/driver.lease`, is made by hard-linking a complete
temporary file onto that name, which is atomic and fails when the name exists, on NFS too (where a file system
has no hard links, by an exclusive create). A heartbeat thread renews it (a whole new file renamed over it); its
holder alone removes it, checked by a random token. A lease whose heartbeat is older than the TTL (60 s, or
SCOREAUG_LEASE_TTL_S) is stale and taken over, and at once when its holder ran on this host and its process is
gone. A refused driver only reads: it changes nothing in the folder. Heartbeats are compared with this host's
clock, so hosts sharing a folder need clocks within the TTL of each other (NTP is far closer); a heartbeat more
than the TTL in the future is stale too. A lease file that is not the five fields of a lease (written by hand,
caught mid-write) is dated by its modification time. Every refusal names the way out by hand: remove the file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

LEASE_FILE = "driver.lease"
TTL_ENV = "SCOREAUG_LEASE_TTL_S"
DEFAULT_TTL_S = 60.0
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


class StudyLocked(RuntimeError):
    """Another driver holds the study folder's lease."""


@dataclass(frozen=True)
class Holder:
    """What a lease file says: who holds it, since when, and when it last said it was alive. `problem`: why the
    file says nothing usable (it is then dated by its modification time), "" for a valid lease."""

    host: str
    pid: int
    started: float
    heartbeat: float
    token: str
    problem: str = ""

    @classmethod
    def read(cls, path: Path) -> Holder | None:
        """The lease's holder, or None without a lease. An unreadable or malformed one (an exclusive create caught
        before its content, a file written by hand) counts as written at its modification time by an unknown holder."""
        try:
            text, modified = path.read_text(), path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            fields = json.loads(text)
            problem = _fields_problem(fields)
        except ValueError:
            problem = "not JSON"
        return cls("an unknown host", 0, modified, modified, "", problem) if problem else cls(**fields)

    def fields(self) -> dict:
        """The lease file's content."""
        return {name: value for name, value in asdict(self).items() if name in LEASE_FIELDS}

    def live(self, ttl_s: float) -> bool:
        """Renewed within the TTL, either side of now: a heartbeat further in the future is a wrong clock or a
        forged file, not a driver (hosts sharing a folder keep their clocks within the TTL of each other)."""
        if self.host == socket.gethostname() and self.pid > 0 and not _pid_running(self.pid):
            return False
        return abs(time.time() - self.heartbeat) <= ttl_s

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        age = time.time() - self.heartbeat
        when = f"{age:.0f} s ago" if age >= 0 else f"{-age:.0f} s in the future"
        if self.problem:
            return f"a driver that left an unusable lease ({self.problem}), written {when}"
        return f"the driver on {self.host} (pid {self.pid}) since {since}, heartbeat {when}"


LEASE_FIELDS = {"host": str, "pid": int, "started": float, "heartbeat": float, "token": str}
KIND_WORDS = {str: "a string", int: "an integer", float: "a finite number"}


def _fields_problem(fields) -> str:
    """What is wrong with a lease file's parsed content, "" if nothing."""
    if not isinstance(fields, dict):
        return f"holds {json.dumps(fields)[:40]}, not a JSON object"
    missing, extra = sorted(LEASE_FIELDS.keys() - fields.keys()), sorted(fields.keys() - LEASE_FIELDS.keys())
    if missing or extra:
        return f"fields missing: {', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'}"
    for name, kind in LEASE_FIELDS.items():
        value = fields[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = (number and math.isfinite(value)) if kind is float else (isinstance(value, kind) and not isinstance(value, bool))
        if not fits:
            return f"{name} is {json.dumps(value)[:40]}, not {KIND_WORDS[kind]}"
    return ""


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def lease_ttl_s() -> float:
    return float(os.environ.get(TTL_ENV, DEFAULT_TTL_S))


class StudyLease:
    """`with StudyLease(output):` holds the folder's lease for the block, renewed every `heartbeat_s`; raises
    StudyLocked, before anything is written, when a live driver holds it. `log` hears of a stale lease taken over."""

    def __init__(self, output_dir: Path, ttl_s: float | None = None, heartbeat_s: float | None = None, log=None):
        self.output = Path(output_dir)
        self.path = self.output / LEASE_FILE
        self.ttl_s = lease_ttl_s() if ttl_s is None else ttl_s
        self.heartbeat_s = min(10.0, self.ttl_s / 4) if heartbeat_s is None else heartbeat_s
        self.log = log
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self.lost: Holder | None = None  # who took the lease over while this driver held it (it stalled past the TTL)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StudyLease:
        self.acquire()
        self._thread = threading.Thread(target=self._beat, name="study-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(3):  # another driver may take or break the lease between our reading and our creating it
            holder = Holder.read(self.path)
            if holder is not None and holder.live(self.ttl_s):
                raise StudyLocked(self._refusal(holder))
            if holder is not None:
                self._break(holder)
            if self._create():
                if holder is not None and self.log:
                    self.log(f"took over the stale lease of {holder.describe()} on {self.output}")
                return
        raise StudyLocked(self._refusal(Holder.read(self.path)))

    def _refusal(self, holder: Holder | None) -> str:
        who = holder.describe() if holder else "another driver"
        return (f"study folder {self.output} is in use by {who}; stop that driver (or wait for it) and "
                f"run again with --resume, or choose another --output (a lease without a heartbeat for "
                f"{self.ttl_s:.0f} s is taken over; if no driver runs on this folder, remove {self.path})")

    def _content(self) -> str:
        return json.dumps(Holder(socket.gethostname(), os.getpid(), self.started, time.time(), self.token).fields())

    def _temporary(self) -> Path:
        """This driver's next lease content, complete, beside the lease (same file system, for link and rename)."""
        temporary = self.output / f".{LEASE_FILE}.{self.token}"
        temporary.write_text(self._content())
        return temporary

    def _create(self) -> bool:
        """Make the lease if there is none: a complete file linked onto its name (atomic, exclusive)."""
        temporary = self._temporary()
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in NO_HARD_LINKS:
                raise
            return self._create_exclusive()
        finally:
            temporary.unlink(missing_ok=True)

    def _create_exclusive(self) -> bool:
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as lease:
            lease.write(self._content())
        return True

    def _break(self, stale: Holder) -> None:
        """Move the stale lease aside, and only it: a fresh one made meanwhile by another driver goes back."""
        aside = self.output / f".{LEASE_FILE}.stale.{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another driver broke it first
            return
        moved = Holder.read(aside)
        if moved is not None and moved.token != stale.token:
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = Holder.read(self.path)
            if holder is None or holder.token != self.token:
                self.lost = holder
                print(f"warning: this driver lost the lease on {self.output} "
                      f"({holder.describe() if holder else 'it was removed'})", file=sys.stderr, flush=True)
                return
            try:
                os.replace(self._temporary(), self.path)
            except OSError:  # a file server's hiccup: the next beat tries again, well within the TTL
                pass

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        (self.output / f".{LEASE_FILE}.{self.token}").unlink(missing_ok=True)  # a renewal the file server refused
        holder = Holder.read(self.path)
        if holder is not None and holder.token == self.token:
            self.path.unlink(missing_ok=True)
