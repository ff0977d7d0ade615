"""Shared fixtures: one Ray instance per test session, started only by tests that need it.

That instance is a real multi-node cluster on this machine (`ray.cluster_utils.Cluster`), shaped like the
`ray up` cluster in cluster.yaml: a head node with the `trial_driver` resource, the dashboard and no CPUs,
and worker nodes that hold the CPUs. Every trial's DDP workers therefore run on worker nodes, and a test can
add or remove a node under a running trial.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The default study of fixed sizes, searched and confirmed (the default study itself is an adaptive design):
# tests of searches, confirmation, resume and faults start from it.
GRID_CONFIG = str(ROOT / "study" / "configs" / "demo_grid.yaml")

# Tiny trial settings shared by tests: a few hundred images, no FID unless a test asks for it.
TINY_TRIAL = [
    "dataset=digits", "model.preset=digits-tiny", "train.batch_size=32", "train.total_kimg=0.256",
    "eval.every_kimg=0.128", "eval.loss_images=32", "eval.num_samples=32", "eval.sampler_steps=4",
    "eval.grid_images=16", "eval.fid=false", "runtime.threads=1",
    # The trial defaults, restated: study tests start from demo.yaml, whose log schedule and sample metrics at every
    # point they do not want unless they ask for them.
    "eval.schedule=every", "eval.fid_at=final",
]

# The session cluster: head (0 CPU, trial drivers, dashboard) + worker nodes of 1 CPU each.
TRIAL_DRIVERS = 2
WORKER_NODES = 3


def free_port() -> int:
    """A port nobody listens on now: bound, read, released (8265 may be taken by another Ray on this machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend: Path, artifacts: Path, port: int, log: Path):
    """A real `mlflow server` (sqlite backend, proxied artifacts) on 127.0.0.1:port, stopped by its process group."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{backend}", "--artifacts-destination",
         str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # job execution leaves a /dev/shm folder per server
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, log)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the group of the server this test started (its workers too)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert server.poll() is None, log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)  # polling the server's health endpoint, not waiting a fixed time
    raise AssertionError(f"mlflow server at {url} did not answer /health in {timeout:.0f} s: {log.read_text()[-2000:]}")


class _SessionCluster:
    def __init__(self):
        self.cluster = None
        self.tmpdir = None


_SESSION = _SessionCluster()


@pytest.fixture(scope="session")
def ray_session():
    """A head node + 3 one-CPU worker nodes, token auth on; yields the connected `ray` module."""
    import ray
    from ray._private.authentication.authentication_token_setup import (
        enable_token_auth_by_default,
        ensure_token_if_auth_enabled,
    )
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    # Ray Train's controller polls its workers every 2 s by default; the study runner lowers it for the Ray it
    # starts, and so does this cluster (its processes inherit the environment at node start).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # A private Ray temp dir: Cluster() writes <tmp>/ray/ray_current_cluster, which a plain `ray.init()` elsewhere
    # on this machine would otherwise pick up and try to join. Short, for the length limit of Unix socket paths.
    _SESSION.tmpdir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    previous_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = _SESSION.tmpdir
    # Token auth as `ray.init()` turns it on for a local cluster (Ray 2.60); every node started below inherits it.
    enable_token_auth_by_default()
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"trial_driver": TRIAL_DRIVERS}, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
    })
    for _ in range(WORKER_NODES):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    _SESSION.cluster = cluster
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    yield ray
    ray.shutdown()
    cluster.shutdown()
    _SESSION.cluster = None
    if previous_tmpdir is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = previous_tmpdir
    shutil.rmtree(_SESSION.tmpdir, ignore_errors=True)


@pytest.fixture
def ray_cluster(ray_session):
    """The session's `ray.cluster_utils.Cluster`, for tests that add or remove nodes (they restore the shape)."""
    return _SESSION.cluster
