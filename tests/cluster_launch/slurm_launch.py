"""`sbatch cluster/slurm/study.sbatch` for real, on a one-node Slurm cluster on 127.0.0.1 that this test starts.

The Slurm path of docs/cluster.md, run as a user runs it, on one machine:
  - Slurm and munge from Debian's packages (slurm-wlm, munge; installed when missing, no service started), run as
    processes this test starts and stops by PID: munged with its own key and socket, slurmctld and slurmd from their
    own slurm.conf (node `localhost` at 127.0.0.1, every daemon bound to 127.0.0.1, state, spool and logs in a
    temporary folder), reached through SLURM_CONF: nothing under /etc changes;
  - the user is root with a fresh HOME (its own ~/.ray/auth_token), the project's venv first on PATH as an activated
    venv puts it (Slurm hands the job this environment), SBATCH_OUTPUT sending the job logs into the test's folder;
  - the command is docs/cluster.md's smoke study command as written there, with only the study folder changed.
One study is stopped and resumed the three ways a Slurm job stops, in order:
  1. submitted; once a trial has ended: what the job listens on (loopback only), MLflow's login, Ray's token, modes;
  2. `scancel --signal=USR1 --batch`, the signal `#SBATCH --signal=B:USR1@120` sends before the time limit: the
     driver saves its state and exits 130, the job tears down and requeues itself (Slurm holds a requeued job for
     about two minutes: the test lifts the hold with `scontrol update StartTime=now`), and resumes the study;
  3. once one more trial has ended, `scancel`: SIGTERM to every process of the job at once;
  4. the documented command again: the job resumes the study and completes.
Then each planned trial is in results.parquet exactly once, and in MLflow as one FINISHED child run with a unique
name and no eval point logged twice. After each job, and at the end, no process that it (or this test) started is
left: the job's are found as the descendants of its slurmstepd, recorded while it runs.

Run as root from the repository root with the project's Python: `python tests/cluster_launch/slurm_launch.py`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch.py's helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project: the study's own ledger reader

from launch import (ANSI, ROOT, LaunchError, TimedSteps, apt_install, basic_auth, describe_pids,
                    docs_command, file_mode, free_port, http_status, is_loopback, listeners, run_steps)

SECTION = "## Slurm"
DOCS_FOLDER = "/mnt/shared/scoreaug/smoke"  # the study folder in the documented command
SMOKE_CONFIG = "study/configs/smoke.yaml"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "PREEMPTED")


# ---------------------------------------------------------------------------------------------------------------
# Processes: a job's are the descendants of its slurmstepd, seen while it runs

def proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent PID, start time) of a live process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields[19]


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


class JobProcesses:
    """Every process of one job (its slurmstepd and what descends from it), recorded at each scan with its start
    time, so that a PID reused later is not taken for it."""

    def __init__(self, job: str):
        self.job, self.seen = job, {}

    def scan(self) -> None:
        table = {int(e.name): s for e in Path("/proc").iterdir() if e.name.isdigit() and (s := proc_stat(int(e.name)))}
        found = {pid for pid in table if cmdline(pid).startswith(f"slurmstepd: [{self.job}.")}
        while True:
            more = {pid for pid, (ppid, _) in table.items() if ppid in found and pid not in found}
            if not more:
                break
            found |= more
        self.seen.update({pid: table[pid][1] for pid in found})

    def alive(self) -> set[int]:
        return {pid for pid, start in self.seen.items() if (stat := proc_stat(pid)) and stat[1] == start}


# ---------------------------------------------------------------------------------------------------------------
# Slurm on this machine, and the study submitted to it

class SlurmLaunch(TimedSteps):
    """A one-node Slurm cluster, the study's jobs run on it, the checks, and the cleanup."""

    def __init__(self):
        super().__init__()
        self.work = Path(tempfile.mkdtemp(prefix="scoreaug-slurm-"))
        self.work.chmod(0o755)  # munged wants every folder above its socket searchable by all
        self.home, self.study, self.conf = self.work / "home", self.work / "shared" / "smoke", self.work / "slurm.conf"
        self.logs = self.work / "logs"
        for folder in (self.home, self.logs, self.work / "tmp", self.study.parent):
            folder.mkdir(parents=True)
        self.daemons: list[subprocess.Popen] = []  # started here, stopped here by PID
        self.jobs: dict[str, JobProcesses] = {}
        self.command = ""  # docs/cluster.md's command, study folder replaced
        self.planned = 0  # trials the documented study plans
        self.job_id = ""  # the job stopped twice (USR1, then scancel)
        self.ended_at_stop = 0

    def env(self) -> dict:
        """The submitting shell's environment: a fresh HOME, this Slurm, the project's venv active."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "SLURM_", "SBATCH_"))}
        env.update(HOME=str(self.home), SLURM_CONF=str(self.conf), TMPDIR=str(self.work / "tmp"),
                   SBATCH_OUTPUT=str(self.logs / "job-%j.out"), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
        return env

    def run(self, command: list[str] | str, timeout: float = 120) -> str:
        """A command as the user types it (a string goes through bash, from the repository root); its output."""
        args = ["bash", "-c", command] if isinstance(command, str) else command
        done = subprocess.run(args, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise LaunchError(f"`{command}` exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
        return done.stdout

    def daemon(self, command: list[str], name: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.out").open("w")
        process = subprocess.Popen(command, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        self.daemons.append(process)
        return process

    def until(self, what: str, timeout: float, check: Callable[[], object]):
        """check()'s first true value, polled each second (scanning the jobs' processes), or fail naming `what`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for processes in self.jobs.values():
                processes.scan()
            value = check()
            if value:
                return value
            time.sleep(1)
        raise LaunchError(f"{what}: not within {timeout:.0f} s")

    # -- the cluster -------------------------------------------------------------------------------------------

    def install(self) -> None:
        if os.geteuid() != 0:
            raise LaunchError("run as root: the test installs packages and starts munged, slurmctld and slurmd")
        needed = [package for package, binary in (("slurm-wlm", "/usr/sbin/slurmctld"), ("munge", "/usr/sbin/munged"),
                                                  ("iproute2", "/usr/bin/ss")) if not Path(binary).exists()]
        if needed:
            apt_install(needed)
        self.note(f"installed {' '.join(needed)}" if needed else "slurm-wlm, munge and iproute2 already installed")
        try:  # the MLflow server's login (basic-auth) needs the auth extra, as cluster.yaml's head setup installs it
            import flask_wtf  # noqa: F401
        except ImportError:
            mlflow = f"mlflow[auth]=={importlib.metadata.version('mlflow')}"
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", mlflow], check=True)
            self.note(f"installed {mlflow}")

    def start_munge(self) -> None:
        key_dir, socket_dir = self.work / "munge-key", self.work / "munge"
        key_dir.mkdir(mode=0o700)
        socket_dir.mkdir(mode=0o755)
        key = key_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.daemon(["munged", "--foreground", f"--key-file={key}", f"--socket={socket_dir / 'munge.socket'}",
                     f"--pid-file={socket_dir / 'munged.pid'}", f"--seed-file={socket_dir / 'munged.seed'}",
                     f"--log-file={self.logs / 'munged.log'}"], "munged")
        self.until("munged's socket", 30, (socket_dir / "munge.socket").exists)

    def write_slurm_conf(self) -> None:
        hardware = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
        memory = int(re.search(r"RealMemory=(\d+)", hardware).group(1))
        folder = self.work
        settings = {
            "ClusterName": "scoreaugtest", "SlurmctldHost": "localhost(127.0.0.1)",
            "SlurmctldPort": free_port(), "SlurmdPort": free_port(),
            "CommunicationParameters": "NoCtldInAddrAny,NoInAddrAny",  # every daemon on 127.0.0.1, none on 0.0.0.0
            "AuthType": "auth/munge", "CredType": "cred/munge", "AuthInfo": f"socket={folder}/munge/munge.socket",
            "SlurmUser": "root", "StateSaveLocation": folder / "state", "SlurmdSpoolDir": folder / "spool",
            "SlurmctldPidFile": folder / "slurmctld.pid", "SlurmdPidFile": folder / "slurmd.pid",
            "SlurmctldLogFile": self.logs / "slurmctld.log", "SlurmdLogFile": self.logs / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc", "TaskPlugin": "task/none", "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core", "JobAcctGatherType": "jobacct_gather/none", "MpiDefault": "none",
            "AccountingStorageType": "accounting_storage/none", "ReturnToService": 2,
            "SchedulerParameters": "sched_interval=2",  # a requeued job starts within seconds once eligible
            "NodeName": f"localhost NodeAddr=127.0.0.1 CPUs={len(os.sched_getaffinity(0))} RealMemory={memory}",
            "PartitionName": "debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        }
        self.conf.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        for folder_name in ("state", "spool"):
            (folder / folder_name).mkdir()

    def start_slurm(self) -> None:
        self.install()
        self.start_munge()
        self.write_slurm_conf()
        self.daemon(["slurmctld", "-D", "-f", str(self.conf)], "slurmctld")
        self.until("slurmctld answering", 60, lambda: subprocess.run(["scontrol", "ping"], env=self.env(),
                                                                      capture_output=True).returncode == 0)
        self.daemon(["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)], "slurmd")
        self.until("sinfo showing the node idle", 60,
                   lambda: self.run(["sinfo", "-h", "-N", "-o", "%N %T"]).split() == ["localhost", "idle"])
        found = [item for item in listeners(pids={d.pid for d in self.daemons}) if not is_loopback(item[1])]
        if found:
            raise LaunchError(f"a Slurm daemon listens beyond loopback: {found}")
        self.note(f"munged, slurmctld, slurmd (pids {', '.join(str(d.pid) for d in self.daemons)}), all on loopback; "
                  f"sinfo: localhost idle; {self.conf}")

    # -- jobs --------------------------------------------------------------------------------------------------

    def job(self, job: str) -> dict[str, str]:
        shown = self.run(["scontrol", "show", "job", job])
        return dict(re.findall(r"(\w+)=(\S*)", shown))

    def job_log(self, job: str) -> str:
        path = self.logs / f"job-{job}.out"
        return ANSI.sub("", path.read_text()) if path.exists() else ""

    def wait_state(self, job: str, states: tuple[str, ...], timeout: float, restarts: int = 0) -> dict[str, str]:
        def reached():
            info = self.job(job)
            if info["JobState"] in ENDED and info["JobState"] not in states:
                raise LaunchError(f"job {job} ended {info['JobState']} (exit {info['ExitCode']}), "
                                  f"expected {states}; its log:\n{self.job_log(job)[-3000:]}")
            return info if info["JobState"] in states and int(info["Restarts"]) >= restarts else None
        return self.until(f"job {job} {'/'.join(states)}", timeout, reached)

    def ended_trials(self) -> int:
        """Trials ended in any phase, as the study's own ledger reader counts them."""
        from study.tracking.ledger import load_records

        phases = {path.stem.removeprefix("trials_") for path in self.study.glob("trials_*.json*")}
        return sum("status" in record for phase in phases for record in load_records(self.study, phase).values())

    def wait_trials(self, job: str, at_least: int, timeout: float = 600) -> int:
        def enough():
            if self.job(job)["JobState"] != "RUNNING":
                raise LaunchError(f"job {job} stopped running; its log:\n{self.job_log(job)[-3000:]}")
            return self.ended_trials() >= at_least
        self.until(f"{at_least} trial(s) ended in job {job}", timeout, enough)
        return self.ended_trials()

    def check_nothing_left(self, job: str) -> None:
        try:
            self.until(f"every process of job {job} gone", 90, lambda: not self.jobs[job].alive())
        except LaunchError:
            raise LaunchError(f"left by job {job}: {describe_pids(sorted(self.jobs[job].alive()))}") from None
        self.note(f"job {job}: none of its {len(self.jobs[job].seen)} processes left")

    # -- the steps ---------------------------------------------------------------------------------------------

    def submit(self) -> str:
        """docs/cluster.md's smoke command as written there, but for the study folder."""
        if not self.command:
            command = docs_command("sbatch", containing=f"--config {SMOKE_CONFIG}", heading=SECTION)
            smoke = yaml.safe_load((ROOT / SMOKE_CONFIG).read_text())
            if command.count(DOCS_FOLDER) != 1 or len(smoke["regimes"]) != 1 or smoke["confirm"]["seeds"] != 0:
                raise LaunchError(f"the smoke command no longer runs {SMOKE_CONFIG}'s one regime, unconfirmed, in "
                                  f"{DOCS_FOLDER}: {command}")
            self.command = command.replace(DOCS_FOLDER, str(self.study))
            self.planned = smoke["search"]["trials_per_regime"]
        job = re.search(r"Submitted batch job (\d+)", self.run(self.command)).group(1)
        self.jobs[job] = JobProcesses(job)
        self.note(f"job {job}: {' '.join(self.command.replace(chr(92) + chr(10), ' ').split())[:150]} ...")
        return job

    def first_job(self) -> None:
        self.job_id = self.submit()
        self.wait_state(self.job_id, ("RUNNING",), 120)
        self.note(f"running; {self.wait_trials(self.job_id, 1)} of {self.planned} trials ended")

    def check_running_job(self) -> None:
        """What a user reaches through the tunnel the job log prints, and what the job listens on."""
        log = self.job_log(self.job_id)
        tunnel = re.search(r"ssh -N -L 8265:127\.0\.0\.1:(\d+) -L 5000:127\.0\.0\.1:(\d+) -J <login node> localhost",
                           log)
        if "head localhost (127.0.0.1)" not in log or not tunnel:
            raise LaunchError(f"the job log names no head at 127.0.0.1 or no tunnel: {log[-2000:]}")
        dashboard, mlflow = (f"http://127.0.0.1:{port}" for port in tunnel.groups())
        token, server = self.home / ".ray" / "auth_token", self.study / "mlflow-server"
        modes = {"~/.ray/auth_token": file_mode(token), "mlflow-server": file_mode(server),
                 "mlflow-server/auth.env": file_mode(server / "auth.env")}
        if list(modes.values()) != ["0o600", "0o700", "0o600"]:
            raise LaunchError(f"file modes: {modes}")
        login = dict(re.findall(r"MLFLOW_TRACKING_(USERNAME|PASSWORD)=(\S+)", (server / "auth.env").read_text()))
        api, jobs_api = f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1", f"{dashboard}/api/jobs/"
        statuses = {
            "MLflow, no login": http_status(api),
            "MLflow, wrong password": http_status(api, {"Authorization": basic_auth(login["USERNAME"], "wrong")}),
            "MLflow, the login": http_status(api, {"Authorization": basic_auth(login["USERNAME"], login["PASSWORD"])}),
            "Ray job API, no token": http_status(jobs_api),
            "Ray job API, the token": http_status(jobs_api, {"Authorization": f"Bearer {token.read_text().strip()}"}),
        }
        if list(statuses.values()) != [401, 401, 200, 401, 200]:
            raise LaunchError(f"expected 401, 401, 200, 401, 200: {statuses}")
        found = listeners(pids=self.jobs[self.job_id].alive())
        outside = [item for item in found if not is_loopback(item[1])]
        if outside or not {int(port) for port in tunnel.groups()} <= {port for *_, port in found}:
            raise LaunchError(f"the job listens beyond loopback, or not on the tunnel's ports: {found}")
        self.note(f"modes {modes}; {statuses}")
        self.note("listening, all on loopback: " + ", ".join(f"{name} {addr}:{port}" for name, addr, port in found))

    def requeue(self) -> None:
        """The pre-timeout signal, sent now: the driver saves its state, the job tears down and requeues itself."""
        job = self.job_id
        self.run(["scancel", "--signal=USR1", "--batch", job])
        info = self.wait_state(job, ("PENDING",), 180, restarts=1)
        log = self.job_log(job)
        expected = ("got SIGUSR1", "driver exited 130", "stopped: driver", f"requeueing job {job}")
        missing = [line for line in expected if line not in log]
        if missing:
            raise LaunchError(f"the job log lacks {missing}: {log[-3000:]}")
        self.check_nothing_left(job)
        self.ended_at_stop = self.ended_trials()
        self.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])  # lift Slurm's hold of a requeued job
        self.note(f"driver exited 130 with {self.ended_at_stop} of {self.planned} trials ended; requeued "
                  f"(Restarts={info['Restarts']}, Reason={info['Reason']}; hold lifted)")

    def resume_requeued(self) -> None:
        job = self.job_id
        self.wait_state(job, ("RUNNING",), 180, restarts=1)
        ended = self.wait_trials(job, self.ended_at_stop + 1)
        if "(restart 1)" not in self.job_log(job) or "resuming it" not in self.job_log(job):
            raise LaunchError(f"the requeued job did not resume the study: {self.job_log(job)[-3000:]}")
        if ended >= self.planned:
            raise LaunchError(f"all {self.planned} trials ended before the scancel: nothing left to cancel mid-study")
        self.note(f"restart 1 resumed the study; {ended} of {self.planned} trials ended")

    def cancel(self) -> None:
        """scancel: SIGTERM to every process of the job at once, the driver included (and again from the batch
        script): the driver saves Tune's state and exits 130 with the --resume line (study/driver/signals.py)."""
        self.run(["scancel", self.job_id])
        self.wait_state(self.job_id, ("CANCELLED",), 120)
        self.check_nothing_left(self.job_id)
        log = self.job_log(self.job_id)
        expected = ("got SIGTERM", "interrupted; continue with: python study/run.py --resume", "driver exited 130")
        missing = [line for line in expected if line not in log.rsplit("(restart 1)", 1)[-1]]
        if missing:
            raise LaunchError(f"after scancel the job log lacks {missing}: {log[-3000:]}")
        self.note(f"cancelled with {self.ended_trials()} of {self.planned} trials ended; the driver got SIGTERM and "
                  "exited 130 with the --resume line")

    def resubmit(self) -> None:
        job = self.submit()
        info = self.wait_state(job, ("COMPLETED",), 900)
        log = self.job_log(job)
        expected = ("resuming it", "driver exited 0", "stopped: driver")
        if info["ExitCode"] != "0:0" or not all(line in log for line in expected):
            raise LaunchError(f"job {job}: exit {info['ExitCode']}, or it did not resume: {log[-3000:]}")
        self.check_nothing_left(job)

    def check_results(self) -> None:
        import pandas as pd

        results = pd.read_parquet(self.study / "results.parquet")
        lost = self.lost_optuna_trials()
        # Every planned trial once: each Optuna trial either in results.parquet or failed as lost (handed out by the
        # searcher but never saved by Tune when a job was cancelled; the resumed search asked again in its place).
        once = (len(results) == self.planned and results["trial_id"].is_unique and results["optuna_trial"].is_unique
                and sorted([*results["optuna_trial"], *lost]) == list(range(self.planned + len(lost))))
        if not once or set(results["status"]) != {"completed"}:
            raise LaunchError(f"results.parquet: {results[['optuna_trial', 'trial_id', 'status']].to_dict('records')}; "
                              f"lost: {lost}")
        summary = check_runs(f"sqlite:///{self.study / 'mlflow-server' / 'mlflow.db'}", set(results["mlflow_run_id"]))
        self.note(f"results.parquet: {self.planned} trials once each, all completed ({len(lost)} lost to a cancel and "
                  f"asked again); MLflow: {summary}")

    def lost_optuna_trials(self) -> list[int]:
        """The Optuna trials the resumed search failed as lost (study/phases/searcher.py, release_lost_trials)."""
        import optuna

        storage = optuna.storages.RDBStorage(f"sqlite:///{self.study / 'optuna.db'}")
        [summary] = optuna.get_all_study_summaries(storage)
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        return [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("lost")]

    # -- cleanup -----------------------------------------------------------------------------------------------

    def cleanup(self, keep_logs: bool) -> list[str]:
        problems = []
        if self.daemons and self.jobs:
            subprocess.run(["scancel", *self.jobs], env=self.env(), capture_output=True)  # ended jobs: no-op
            with contextlib.suppress(LaunchError):
                self.until("the jobs' processes gone", 90, lambda: not any(p.alive() for p in self.jobs.values()))
        for job, processes in self.jobs.items():
            if left := processes.alive():
                problems.append(f"job {job} left {describe_pids(sorted(left))}")
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        for process in reversed(self.daemons):  # slurmd, slurmctld, munged
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                problems.append(f"{process.args[0]} did not stop on SIGTERM")
        marked = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if str(self.work) in cmdline(pid)]
        if marked:
            problems.append(f"processes naming {self.work} left: {describe_pids(marked)}")
        if keep_logs:
            kept = Path(tempfile.mkdtemp(prefix="scoreaug-slurm-logs-"))
            shutil.copytree(self.logs, kept, dirs_exist_ok=True)
            if (self.study / "slurm").exists():
                shutil.copytree(self.study / "slurm", kept / "study-slurm", dirs_exist_ok=True)
            print(f"logs of the failed run: {kept}", flush=True)
        shutil.rmtree(self.work, ignore_errors=True)
        return problems


def check_runs(tracking_uri: str, run_ids: set[str]) -> str:
    """The study's MLflow runs, read from the server's database: one FINISHED parent, and one FINISHED child per
    results row (the same run ids), with unique names and no eval point logged twice."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    if len(parents) != 1 or parents[0].info.status != "FINISHED":
        raise LaunchError(f"expected one FINISHED parent run: {[(r.info.run_name, r.info.status) for r in parents]}")
    names = [r.info.run_name for r in children]
    if ({r.info.run_id for r in children} != run_ids or len(set(names)) != len(names)
            or any(r.info.status != "FINISHED" for r in children)):
        raise LaunchError(f"child runs {[(r.info.run_name, r.info.status) for r in children]} against results "
                          f"{sorted(run_ids)}")
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_loss")]
        if not steps or len(steps) != len(set(steps)):
            raise LaunchError(f"{run.info.run_name}: test_loss logged at steps {steps}")
    return f"1 FINISHED parent, {len(children)} FINISHED children with unique names, no eval point twice"


def steps(launch: SlurmLaunch) -> list[tuple[str, Callable[[], object]]]:
    """Every step, in order, named as the report names it; each must pass for the next to run."""
    return [
        ("start Slurm: packages, munged, slurmctld, slurmd; sinfo shows the node idle", launch.start_slurm),
        ("sbatch the smoke study (docs/cluster.md) until a trial ended", launch.first_job),
        ("while it runs: loopback only, MLflow login, Ray token, file modes", launch.check_running_job),
        ("scancel --signal=USR1 --batch: state saved, job requeued", launch.requeue),
        ("the requeued job resumes the study", launch.resume_requeued),
        ("scancel mid-study: every process of the job gone", launch.cancel),
        ("sbatch again: the study resumes and completes", launch.resubmit),
        ("each planned trial once, in results.parquet and MLflow", launch.check_results),
    ]


def main() -> int:
    launch = SlurmLaunch()
    return run_steps(launch, steps(launch), "clean up: jobs, slurmd, slurmctld, munged, files", launch.cleanup,
                     "slurm launch")


if __name__ == "__main__":
    sys.exit(main())
