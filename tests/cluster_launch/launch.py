"""`ray up cluster-local.yaml` for real: this machine is the head, reached over SSH on 127.0.0.1.

The on-prem path of docs/cluster.md, run as a new user would run it, on one machine:
  - the "node" is an unprivileged user (`ray down` runs `ray stop` there as that user, which cannot touch anyone
    else's Ray) with its own sshd on 127.0.0.1 and a free high port, a throw-away host key and user key;
  - the "laptop" is this process's user with a fresh HOME (its own ~/.ray/auth_token, Ray temp dir and SSH settings);
  - the node's home is in memory (/dev/shm) where that is possible: deleting its 2 GB venv from this machine's disk
    (mounted with `discard`) takes over two minutes;
  - the config is cluster-local.yaml with only the addresses, SSH user and key, shared folder and head CPUs changed,
    never its commands (`derive_config`; tests/test_cluster.py checks that offline).
Then, in order, each step timed: ray up; MLflow health and login; Ray token auth; what listens where; the smoke
study submitted exactly as docs/cluster.md writes it; its runs read back from the head's MLflow through an SSH
tunnel; `ray dashboard`; ray up again (MLflow restarts cleanly); ray down; nothing of the node user left.

Every address stays on loopback. Ray resolves 127.0.0.1 to the machine's outward address unless it runs in
single-node mode, so the node's sshd sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's switch for that mode: it
keeps the head on 127.0.0.1; a worker could not join, and this cluster has none), and so does the laptop (its Ray
clients then connect to 127.0.0.1 as given). Ray's config has no SSH port, so the laptop's `ssh` is a two-line shim
that reads an SSH config with this sshd's port, as ~/.ssh/config would.

Run as root from the repository root with the project's Python: `python tests/cluster_launch/launch.py`.
Needs apt (openssh-server, rsync, python3-venv when missing) and PyPI (the node's setup installs Ray and the
project into a fresh venv). Stops what it started by PID and deletes the node user, whatever happens.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "cluster-local.yaml"
DOCS = ROOT / "docs" / "cluster.md"

NODE_USER = "scoreaug-node"
NODE_MARKER = ".scoreaug-launch-test"  # in the node's home: the user is this test's, safe to delete
HEAD_IP = "127.0.0.1"
HEAD_CPUS = 2  # the smoke study trains on the head: there are no workers
SHIPPED_SHARED = "/mnt/shared/scoreaug"
SHIPPED_HEAD_CPUS = "--num-cpus=0"
# Ports the shipped commands fix (MLflow, GCS, dashboard) or Ray takes by default: another Ray on this machine
# (a test session's, say) holds some of them, and the head cannot start beside it.
FIXED_PORTS = {5000: "MLflow", 6379: "Ray GCS", 8265: "Ray dashboard", 10001: "Ray client",
               52365: "Ray dashboard agent", 44217: "Ray autoscaler metrics", 44227: "Ray dashboard metrics"}
MLFLOW = f"http://{HEAD_IP}:5000"
DASHBOARD = f"http://{HEAD_IP}:8265"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LaunchError(Exception):
    """A step failed; the message says what was expected and what happened."""


# ---------------------------------------------------------------------------------------------------------------
# The config and the documented commands

def _replace_once(commands: list[str], old: str, new: str) -> list[str]:
    hits = sum(c.count(old) for c in commands)
    if hits != 1:
        raise LaunchError(f"expected {old!r} once in the shipped commands, found it {hits} times")
    return [c.replace(old, new) for c in commands]


def derive_config(shipped: dict, *, user: str, key: str, shared: str, head_cpus: int) -> dict:
    """cluster-local.yaml for this machine: addresses, SSH user and key, shared folder and head CPUs; nothing else."""
    config = copy.deepcopy(shipped)
    config["provider"].update(head_ip=HEAD_IP, worker_ips=[])
    config["auth"].update(ssh_user=user, ssh_private_key=key)
    config["setup_commands"] = _replace_once(config["setup_commands"], f"SCOREAUG_SHARED={SHIPPED_SHARED}",
                                             f"SCOREAUG_SHARED={shared}")
    config["head_start_ray_commands"] = _replace_once(config["head_start_ray_commands"], SHIPPED_HEAD_CPUS,
                                                      f"--num-cpus={head_cpus}")
    return config


def docs_section(heading: str = "## On-prem") -> str:
    """docs/cluster.md's section that starts with `heading`, up to the next section."""
    text = DOCS.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def docs_onprem_section() -> str:
    return docs_section("## On-prem")


def docs_command(prefix: str, containing: str = "", heading: str = "## On-prem") -> str:
    """The first command of docs/cluster.md's section `heading` (on-prem by default) that starts with `prefix` and
    contains `containing`, as written there (continuation lines included)."""
    lines = docs_section(heading).splitlines()
    for first, line in enumerate(lines):
        if not line.startswith(prefix):
            continue
        command = []
        for line in lines[first:]:
            command.append(line.rstrip())
            if not line.rstrip().endswith("\\"):
                break
        if containing in "\n".join(command):
            return "\n".join(command)
    raise LaunchError(f"docs/cluster.md's section {heading!r} has no command starting with {prefix!r} with {containing!r}")


# ---------------------------------------------------------------------------------------------------------------
# Small helpers

def http_status(url: str, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def wait_http(url: str, timeout: float) -> int:
    """The HTTP status of `url`'s first answer, polling while nothing answers (a server or tunnel starting)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError):
            return http_status(url)
        time.sleep(0.5)
    raise LaunchError(f"nothing answered at {url} within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HEAD_IP, 0))
        return probe.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HEAD_IP, port)) == 0


def user_pids(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return sorted(pids)


def describe_pids(pids: list[int]) -> str:
    names = []
    for pid in pids:
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            names.append(f"{pid} {command[:100]}")
    return "; ".join(names)


def listeners(uid: int | None = None, pids: set[int] | None = None) -> list[tuple[str, str, int]]:
    """(process name, local address, port) of every TCP socket that a process of `uid`, or one of `pids`, listens on."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        local = fields[3]
        address, port = local.rsplit(":", 1)
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            with contextlib.suppress(OSError):
                if int(pid) in (pids or ()) or (uid is not None and Path(f"/proc/{pid}").stat().st_uid == uid):
                    found.append((name, address.strip("[]"), int(port)))
                    break
    return sorted(set(found), key=lambda item: item[2])


def is_loopback(address: str) -> bool:
    address = address.split("%")[0]
    if address == "*":
        return False
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def node_home_parent() -> str:
    """Where the node's home goes: memory (/dev/shm) where it is an executable tmpfs. Deleting a 2 GB venv from a
    disk mounted with `discard` (this machine's) takes over two minutes; from memory, seconds."""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount_point, fstype, options = line.split()[:4]
        if mount_point == "/dev/shm" and fstype == "tmpfs" and "noexec" not in options.split(","):
            return "/dev/shm"
    return "/home"


def file_mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def apt_install(packages: list[str]) -> None:
    """Debian packages installed with no service started (a package's daemon would listen beyond loopback)."""
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)


class TimedSteps:
    """Steps printed and timed as they run, and their timings at the end (run_steps runs them)."""

    def __init__(self):
        self.started = time.time()
        self.timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str):
        began = time.time()
        print(f"[{began - self.started:6.1f} s] {name} ...", flush=True)
        try:
            yield
        except BaseException:
            print(f"[{time.time() - self.started:6.1f} s] {name}: FAILED ({time.time() - began:.1f} s)", flush=True)
            raise
        took = time.time() - began
        self.timings.append((name, took))
        print(f"[{time.time() - self.started:6.1f} s] {name}: ok ({took:.1f} s)", flush=True)

    def note(self, text: str) -> None:
        print(f"           {text}", flush=True)

    def report(self) -> None:
        print("\nstep timings:")
        for name, took in self.timings:
            print(f"  {took:7.1f} s  {name}")
        print(f"  {time.time() - self.started:7.1f} s  in all")


def run_steps(runner: TimedSteps, steps: list[tuple[str, Callable[[], object]]], cleanup_name: str,
              cleanup: Callable[[bool], list[str]], name: str) -> int:
    """Each step in order until one fails; then always the cleanup (told whether to keep the logs), the timings and
    the verdict, counted as a test runner counts. Returns the exit status."""
    failure = None
    try:
        for step_name, run in steps:
            with runner.step(step_name):
                run()
    except Exception as err:  # noqa: BLE001 - any failure ends the run, reported after the cleanup
        failure = err if isinstance(err, LaunchError) else LaunchError(f"{type(err).__name__}: {err}")
    finally:
        with runner.step(cleanup_name):
            problems = cleanup(failure is not None)
    runner.report()
    if failure is not None:
        print(f"\n{name} test FAILED: {failure}", file=sys.stderr, flush=True)
    if problems:
        print(f"\n{name} test FAILED at cleanup: {'; '.join(problems)}", file=sys.stderr, flush=True)
    failed = failure is not None or bool(problems)
    print(f"\n{name.replace(' ', '-')}: {len(runner.timings)} passed, {int(failed)} failed")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------------------
# The launch

class Launch(TimedSteps):
    """The machine set up as a head node and a laptop, the steps run against it, and the cleanup."""

    def __init__(self):
        super().__init__()
        self.work = Path(tempfile.mkdtemp(prefix="scoreaug-launch-"))
        self.laptop_home = self.work / "laptop"
        self.shared = self.work / "shared"
        self.key = self.laptop_home / ".ssh" / "id_ed25519"
        self.config_path = self.work / "cluster-local.yaml"
        self.processes: list[subprocess.Popen] = []  # started here, stopped here by PID (process group)
        self.node = None
        self.sshd = None
        self.token = ""  # the laptop's Ray token
        self.mlflow_login: dict[str, str] = {}

    # -- running -----------------------------------------------------------------------------------------------

    def laptop_env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        env.update(HOME=str(self.laptop_home), TMPDIR=str(self.work / "tmp"), RAY_TMPDIR=str(self.work / "tmp"),
                   PATH=f"{self.work / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
                   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # Ray's clients here connect to 127.0.0.1 as given, too
        env.update(extra)
        return env

    def sh(self, command: str, log_name: str, timeout: float = 600, check: bool = True, **env) -> str:
        """A shell command on the laptop, as a user types it; its output goes to a log file and is returned."""
        log = self.work / "logs" / f"{len(self.timings):02d}-{log_name}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("w") as out:
            out.write(f"$ {command}\n")
            out.flush()
            done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=self.laptop_env(**env), stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout)
        text = ANSI.sub("", log.read_text())
        if check and done.returncode != 0:
            raise LaunchError(f"`{command}` exited {done.returncode}; last lines of {log}:\n{text[-4000:]}")
        return text

    def background(self, command: list[str], log_name: str, **env) -> subprocess.Popen:
        """A command left running, as in a second terminal: its stdin stays open (`ray dashboard` runs `ssh -tt`,
        which ends at end of input)."""
        log = (self.work / "logs" / f"{log_name}.log").open("w")
        process = subprocess.Popen(command, cwd=ROOT, env=self.laptop_env(**env), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.PIPE, start_new_session=True)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the group this test started for it (ssh children included)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)

    def node_file(self, relative: str) -> Path:
        return Path(self.node.pw_dir) / relative

    # -- the machine -------------------------------------------------------------------------------------------

    def preflight(self) -> None:
        if os.geteuid() != 0:
            raise LaunchError("run as root: the test installs packages, creates the node user and starts sshd")
        taken = [f"{port} ({what})" for port, what in FIXED_PORTS.items() if port_taken(port)]
        if taken:
            raise LaunchError(f"ports the cluster needs are in use on {HEAD_IP}: {', '.join(taken)}")

    def install_packages(self) -> None:
        needed = [package for package, present in (
            ("openssh-server", Path("/usr/sbin/sshd").exists()),
            ("rsync", shutil.which("rsync") is not None),
            ("iproute2", shutil.which("ss") is not None),  # ss: who listens where
            # `python3 -m venv` needs ensurepip; cluster-local.yaml would `sudo apt-get` it, and the node has no sudo.
            ("python3-venv", subprocess.run(["/usr/bin/python3", "-c", "import ensurepip"],
                                            capture_output=True).returncode == 0),
        ) if not present]
        if not needed:
            self.note("openssh-server, rsync, iproute2 and python3-venv already installed")
            return
        apt_install(needed)
        self.note(f"installed {' '.join(needed)}")

    def remove_node_user(self) -> None:
        try:
            node = pwd.getpwnam(NODE_USER)
        except KeyError:
            return
        home = Path(node.pw_dir)
        lost_in_memory = home.parent == Path("/dev/shm") and not home.exists()  # a run cut short, then a reboot
        if not (home / NODE_MARKER).exists() and not lost_in_memory:
            raise LaunchError(f"a user {NODE_USER} exists that this test did not create; remove it or rename NODE_USER")
        self.kill_user_processes(node.pw_uid)
        shutil.rmtree(node.pw_dir, ignore_errors=True)
        subprocess.run(["userdel", NODE_USER], check=True)

    def kill_user_processes(self, uid: int) -> list[int]:
        """SIGTERM, then SIGKILL, to each process of the node user, by PID. Returns the PIDs that were found."""
        found = user_pids(uid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in user_pids(uid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.time() + 10
            while user_pids(uid) and time.time() < deadline:
                time.sleep(0.2)
        return found

    def create_node_user(self) -> None:
        self.remove_node_user()
        subprocess.run(["useradd", "--create-home", "--base-dir", node_home_parent(), "--shell", "/bin/bash",
                        NODE_USER], check=True)
        subprocess.run(["usermod", "--password", "*", NODE_USER], check=True)  # no password, not locked: keys only
        self.node = pwd.getpwnam(NODE_USER)
        home = Path(self.node.pw_dir)
        (home / NODE_MARKER).touch()
        # The node's pip finds what this machine's pip finds on disk (the CPU torch wheel, local indexes), as an
        # admin would set up /etc/pip.conf; everything else comes from PyPI.
        pip_conf = home / ".config" / "pip" / "pip.conf"
        pip_conf.parent.mkdir(parents=True)
        pip_conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in self.local_pip_sources().items()))
        (home / "tmp").mkdir()
        subprocess.run(["chown", "-R", f"{NODE_USER}:{NODE_USER}", str(home)], check=True)
        self.note(f"user {NODE_USER} (uid {self.node.pw_uid}, home {home}); "
                  f"pip sources on disk: {self.local_pip_sources() or 'none'}")

    @staticmethod
    def local_pip_sources() -> dict[str, str]:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
        sources: dict[str, list[str]] = {}
        for line in listed.splitlines():
            key, _, value = line.partition("=")
            option = key.rsplit(".", 1)[-1]
            if option not in ("find-links", "extra-index-url"):
                continue
            for location in value.strip("'\"").split():
                path = location.removeprefix("file://")
                if path.startswith("/") and Path(path).exists() and location not in sources.get(option, []):
                    sources.setdefault(option, []).append(location)
        return {option: " ".join(locations) for option, locations in sources.items()}

    def start_sshd(self) -> None:
        ssh_dir = self.laptop_home / ".ssh"
        ssh_dir.mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        host_key = self.work / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        node_ssh = Path(self.node.pw_dir) / ".ssh"
        node_ssh.mkdir(mode=0o700)
        shutil.copy(f"{self.key}.pub", node_ssh / "authorized_keys")
        subprocess.run(["chown", "-R", f"{NODE_USER}:{NODE_USER}", str(node_ssh)], check=True)
        port = free_port()
        config = self.work / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {HEAD_IP}", f"Port {port}", f"HostKey {host_key}", f"PidFile {self.work / 'sshd.pid'}",
            f"AllowUsers {NODE_USER}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin no", "UsePAM no", "AuthorizedKeysFile .ssh/authorized_keys",
            # The node's environment: its own Ray temp dir (not /tmp/ray, where others' Ray lives), Ray on loopback.
            f"SetEnv RAY_TMPDIR={self.node.pw_dir}/tmp RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0", ""]))
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        log = (self.work / "logs" / "sshd.log")
        log.parent.mkdir(exist_ok=True)
        self.sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(config), "-E", str(log)],
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        # The laptop's SSH settings (~/.ssh/config would hold them; ssh reads that from root's passwd home, so a shim).
        (self.work / "tmp").mkdir()
        bin_dir = self.work / "bin"
        bin_dir.mkdir()
        ssh_config = self.laptop_home / ".ssh" / "config"
        ssh_config.write_text(f"Host {HEAD_IP}\n  Port {port}\n  UserKnownHostsFile {ssh_dir / 'known_hosts'}\n"
                              "  StrictHostKeyChecking accept-new\n")
        shim = bin_dir / "ssh"
        shim.write_text(f"#!/bin/sh\nexec {shutil.which('ssh')} -F {ssh_config} \"$@\"\n")
        shim.chmod(0o755)
        deadline = time.time() + 20
        while not port_taken(port):
            if self.sshd.poll() is not None or time.time() > deadline:
                raise LaunchError(f"sshd did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        self.sh(f"ssh -i {self.key} {NODE_USER}@{HEAD_IP} true", "ssh-check", timeout=30)
        self.note(f"sshd pid {self.sshd.pid} on {HEAD_IP}:{port}, as {NODE_USER} with a fresh key")

    def write_config(self) -> None:
        self.shared.mkdir()
        subprocess.run(["chown", f"{NODE_USER}:{NODE_USER}", str(self.shared)], check=True)
        self.work.chmod(0o755)  # the node reads the shared folder below it
        shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
        config = derive_config(shipped, user=NODE_USER, key=str(self.key), shared=str(self.shared), head_cpus=HEAD_CPUS)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.note(f"{self.config_path}: cluster-local.yaml with head_ip {HEAD_IP}, no workers, ssh {NODE_USER}, "
                  f"shared {self.shared}, --num-cpus={HEAD_CPUS}")

    # -- the steps ---------------------------------------------------------------------------------------------

    def auth_token(self) -> None:
        command = docs_command("ray get-auth-token --generate")
        self.sh(command, "auth-token")
        token = self.laptop_home / ".ray" / "auth_token"
        if file_mode(token) != "0o600":
            raise LaunchError(f"{token} has mode {file_mode(token)} after `{command}`")
        self.token = token.read_text().strip()

    def ray_up(self, log_name: str) -> None:
        output = self.sh(f"ray up -y {self.config_path}", log_name, timeout=900)
        collision = re.search(r"Failed to bind to \S+", output)
        if collision:  # another Ray on this machine took a port between the preflight and the head's start
            raise LaunchError(f"ray up: {collision.group(0)} (another process took the port; see logs/{log_name})")
        if "Local node IP: 127.0.0.1" not in output:
            raise LaunchError(f"ray up's output has no 'Local node IP: 127.0.0.1' (see logs/{log_name})")
        self.note("Ray reports: Local node IP: 127.0.0.1")

    def mlflow_pid(self) -> int:
        return int(self.node_file("mlflow/server.pid").read_text())

    def check_mlflow_login(self) -> None:
        if http_status(f"{MLFLOW}/health") != 200:
            raise LaunchError(f"{MLFLOW}/health did not answer 200")
        command = docs_command("ray exec cluster-local.yaml").replace("cluster-local.yaml", str(self.config_path))
        shown = self.sh(command, "mlflow-login", timeout=120)
        self.mlflow_login = dict(re.findall(r"(MLFLOW_TRACKING_(?:USERNAME|PASSWORD))=(\S+)", shown))
        if set(self.mlflow_login) != {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}:
            raise LaunchError(f"no MLflow login in the output of ray exec: {shown[-1000:]}")
        api = f"{MLFLOW}/api/2.0/mlflow/experiments/search?max_results=1"
        user, password = self.mlflow_login["MLFLOW_TRACKING_USERNAME"], self.mlflow_login["MLFLOW_TRACKING_PASSWORD"]
        statuses = {
            "no login": http_status(api),
            "wrong password": http_status(api, {"Authorization": basic_auth(user, "wrong")}),
            "the login": http_status(api, {"Authorization": basic_auth(user, password)}),
        }
        if statuses != {"no login": 401, "wrong password": 401, "the login": 200}:
            raise LaunchError(f"MLflow API answered {statuses}; expected 401, 401, 200")
        modes = {path: file_mode(self.node_file(path)) for path in (".ray/auth_token", "mlflow/auth.env", "mlflow")}
        if modes != {".ray/auth_token": "0o600", "mlflow/auth.env": "0o600", "mlflow": "0o700"}:
            raise LaunchError(f"file modes on the head: {modes}")
        self.note(f"/health 200; API {statuses}; head files {modes}")

    def check_ray_token(self) -> None:
        api = f"{DASHBOARD}/api/jobs/"
        statuses = {
            "no token": http_status(api),
            "wrong token": http_status(api, {"Authorization": "Bearer " + "0" * len(self.token)}),
            "the token": http_status(api, {"Authorization": f"Bearer {self.token}"}),
        }
        if statuses["no token"] != 401 or statuses["wrong token"] not in (401, 403) or statuses["the token"] != 200:
            raise LaunchError(f"job API answered {statuses}; expected 401, 401 or 403, 200")
        self.sh(f"ray job list --address {DASHBOARD}", "job-list", timeout=60, RAY_AUTH_MODE="token")
        status = self.sh(f"ray status --address {HEAD_IP}:6379", "ray-status", timeout=60, RAY_AUTH_MODE="token")
        if "trial_driver" not in status:
            raise LaunchError(f"ray status shows no trial_driver resource: {status[-1000:]}")
        began = time.time()
        refused = self.sh(f"ray status --address {HEAD_IP}:6379", "ray-status-wrong-token", timeout=120, check=False,
                          RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * len(self.token))
        if "InvalidAuthToken" not in refused:
            raise LaunchError(f"the GCS did not refuse `ray status` with a wrong token: {refused[-1000:]}")
        self.note(f"job API {statuses}; `ray job list` and `ray status` with the token: ok; "
                  f"`ray status` with a wrong token refused in {time.time() - began:.0f} s")

    def check_listeners(self) -> None:
        """Everything the head started listens on loopback (the node IP is 127.0.0.1 here; docs/cluster.md names
        what listens on the head's address on a real cluster)."""
        found = listeners(self.node.pw_uid)
        outside = [item for item in found if not is_loopback(item[1])]
        if outside:
            raise LaunchError(f"the head listens beyond loopback: {outside}")
        ports = {port for _, _, port in found}
        if not {5000, 6379, 8265} <= ports:
            raise LaunchError(f"MLflow, GCS or the dashboard is not among the head's listeners: {found}")
        self.note("listening, all on loopback: " + ", ".join(f"{name} {addr}:{port}" for name, addr, port in found))

    def submit_smoke_study(self) -> None:
        section = docs_onprem_section()
        if "export RAY_AUTH_MODE=token" not in section:
            raise LaunchError("docs/cluster.md's on-prem section does not export RAY_AUTH_MODE=token before submitting")
        command = docs_command("ray job submit", containing="--set name=smoke")
        output = self.sh(command, "job-submit", timeout=900, RAY_AUTH_MODE="token")
        for expected in ("succeeded", f"tracking: {MLFLOW} (experiment smoke)", f"a browser at {MLFLOW}"):
            if expected not in output:
                raise LaunchError(f"the job's output lacks {expected!r}: {output[-3000:]}")
        self.note("submitted as docs/cluster.md writes it: " + " ".join(command.split())[:150] + " ...")

    def read_runs_back(self) -> None:
        """The smoke study's runs, from the head's MLflow, through the SSH tunnel docs/cluster.md gives."""
        local_port = free_port()  # the docs forward 5000; on this machine 5000 is the head's own
        tunnel_command = docs_command("ssh -i ~/.ssh/id_ed25519 -N -L 5000:").replace("5000:", f"{local_port}:", 1)
        tunnel_command = (tunnel_command.replace("~/.ssh/id_ed25519", str(self.key))
                          .replace("<head_ip>", HEAD_IP).replace("<user>", NODE_USER))
        tunnel = self.background(shlex.split(tunnel_command), "mlflow-tunnel")
        url = f"http://127.0.0.1:{local_port}"
        try:
            if wait_http(f"{url}/health", timeout=30) != 200:
                raise LaunchError("MLflow's /health through the tunnel did not answer 200")
            if http_status(f"{url}/api/2.0/mlflow/experiments/search?max_results=1") != 401:
                raise LaunchError("MLflow through the tunnel answered without a login")
            summary = read_smoke_runs(url, self.mlflow_login)
        finally:
            self.stop(tunnel)
        if not list(self.shared.glob("mlartifacts/**/results.parquet")):
            raise LaunchError(f"no results.parquet under {self.shared}/mlartifacts: no artifacts in the shared folder")
        self.note(f"through `{' '.join(tunnel_command.split())}`: {summary}; artifacts in {self.shared}/mlartifacts")

    def check_dashboard_tunnel(self) -> None:
        local_port = free_port()  # `ray dashboard` forwards 8265 by default; on this machine 8265 is the head's own
        dashboard = self.background(["ray", "dashboard", "--port", str(local_port), str(self.config_path)], "dashboard")
        api = f"http://127.0.0.1:{local_port}/api/jobs/"
        try:
            statuses = {"no token": wait_http(api, timeout=60),
                        "the token": http_status(api, {"Authorization": f"Bearer {self.token}"})}
        finally:
            self.stop(dashboard)
        if statuses != {"no token": 401, "the token": 200}:
            raise LaunchError(f"the job API through `ray dashboard` answered {statuses}; expected 401, 200")
        self.note(f"`ray dashboard --port {local_port}`: the job API through the tunnel answers {statuses}")

    def ray_up_again(self) -> None:
        old = self.mlflow_pid()
        self.ray_up("ray-up-again")
        new = self.mlflow_pid()
        log = self.node_file("mlflow/server.log").read_text()
        if new == old or Path(f"/proc/{old}").exists():
            raise LaunchError(f"MLflow was not restarted: pid {old} -> {new}")
        if "Address already in use" in log or http_status(f"{MLFLOW}/health") != 200:
            raise LaunchError(f"the restarted MLflow is not healthy: {log[-2000:]}")
        self.note(f"MLflow pid {old} -> {new}, /health 200, no 'Address already in use' in its log")

    def ray_down(self) -> None:
        mlflow = self.mlflow_pid()
        self.sh(f"ray down -y {self.config_path}", "ray-down", timeout=300)
        deadline = time.time() + 60  # SSH control connections linger 10 s (Ray's ControlPersist)
        while user_pids(self.node.pw_uid) and time.time() < deadline:
            time.sleep(0.5)
        left = user_pids(self.node.pw_uid)
        if left:
            raise LaunchError(f"processes of {NODE_USER} left after ray down: {describe_pids(left)}")
        if port_taken(5000):
            raise LaunchError("port 5000 still answers after ray down")
        self.note(f"no process of {NODE_USER} left (MLflow pid {mlflow} gone), port 5000 closed")

    # -- cleanup -----------------------------------------------------------------------------------------------

    def cleanup(self, keep_logs: bool) -> list[str]:
        problems = []
        for process in self.processes:
            self.stop(process)
        if self.node is not None:
            left = self.kill_user_processes(self.node.pw_uid)
            if left:
                problems.append(f"killed {len(left)} leftover process(es) of {NODE_USER}")
        if self.sshd is not None:
            self.sshd.terminate()  # by its PID
            self.sshd.wait(timeout=15)
        if self.node is not None:
            shutil.rmtree(self.node.pw_dir, ignore_errors=True)
            subprocess.run(["userdel", NODE_USER])
        if keep_logs:
            kept = Path(tempfile.mkdtemp(prefix="scoreaug-launch-logs-"))
            shutil.copytree(self.work / "logs", kept, dirs_exist_ok=True)
            print(f"logs of the failed run: {kept}", flush=True)
        shutil.rmtree(self.work, ignore_errors=True)
        return problems

def basic_auth(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def read_smoke_runs(url: str, login: dict[str, str]) -> str:
    """One FINISHED parent run, and its nested children all FINISHED, read with MLflow's own client."""
    saved = {k: os.environ.get(k) for k in login}
    os.environ.update(login)
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("smoke")
        if experiment is None:
            raise LaunchError(f"no experiment 'smoke' on {url}")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        if len(parents) != 1 or parents[0].info.status != "FINISHED":
            found = [(r.info.run_id, r.info.status) for r in parents]
            raise LaunchError(f"expected one FINISHED parent run, found {found}")
        parent = parents[0].info.run_id
        if len(children) != 2 or any(r.info.status != "FINISHED" or r.data.tags["mlflow.parentRunId"] != parent
                                     for r in children):
            raise LaunchError(f"expected 2 FINISHED children of {parent}, found "
                              f"{[(r.info.status, r.data.tags['mlflow.parentRunId']) for r in children]}")
        if not all(client.get_metric_history(r.info.run_id, "test_loss") for r in children):
            raise LaunchError("a child run has no test_loss history")
        artifacts = {a.path for a in client.list_artifacts(parent)}
        if "results.parquet" not in artifacts:
            raise LaunchError(f"the parent run has no results.parquet: {sorted(artifacts)}")
        return f"experiment smoke: 1 FINISHED parent, {len(children)} FINISHED children, results.parquet"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def steps(launch: Launch) -> list[tuple[str, Callable[[], object]]]:
    """Every step of the launch, in order, named as the report names it; each must pass for the next to run."""
    def prepare_machine() -> None:
        launch.preflight()
        launch.install_packages()
        launch.create_node_user()
        launch.start_sshd()
        launch.write_config()

    return [
        ("prepare the machine: packages, node user, sshd, config", prepare_machine),
        ("ray get-auth-token --generate && chmod 600 (as docs/cluster.md)", launch.auth_token),
        ("ray up -y (setup, MLflow, Ray)", lambda: launch.ray_up("ray-up")),
        ("MLflow: /health, login required, file modes", launch.check_mlflow_login),
        ("Ray token auth: job API and GCS", launch.check_ray_token),
        ("listening sockets of the head", launch.check_listeners),
        ("ray job submit the smoke study (docs/cluster.md)", launch.submit_smoke_study),
        ("read the runs back from the head's MLflow", launch.read_runs_back),
        ("ray dashboard tunnel", launch.check_dashboard_tunnel),
        ("ray up -y again (MLflow restarts)", launch.ray_up_again),
        ("ray down -y", launch.ray_down),
    ]


def main() -> int:
    launch = Launch()
    return run_steps(launch, steps(launch), "clean up: tunnels, node processes, sshd, node user, files", launch.cleanup,
                     "cluster launch")


if __name__ == "__main__":
    sys.exit(main())
