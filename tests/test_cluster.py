"""Scale-out: the `ray up` configs validated by Ray's own cluster launcher code (cloud provider mocked), their head's
MLflow start and stop run in a shell, a study trial whose DDP workers span nodes and survive losing one, and a
study tracked by a real `mlflow server`. tests/cluster_launch/launch.py launches cluster-local.yaml for real."""

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.config import load_study_config
from study.driver.runner import run_study
from tests.conftest import GRID_CONFIG, ROOT, TINY_TRIAL, WORKER_NODES, free_port, mlflow_server

CLUSTER_YAML = ROOT / "cluster.yaml"
CLUSTER_LOCAL_YAML = ROOT / "cluster-local.yaml"


# ---------------------------------------------------------------------------------------------------------------
# cluster.yaml / cluster-local.yaml, checked offline the way `ray up` checks them

class _OfflineProvider:
    """Stands in for the AWS node provider: `ray up` would query EC2 for instance types and create IAM roles,
    subnets and security groups here. Everything else in the config path is Ray's own code."""

    @staticmethod
    def fillout_available_node_types_resources(config):
        return config

    @staticmethod
    def bootstrap_config(config):
        return config


def _bootstrap(path: Path) -> dict:
    """`ray up`'s config path: load YAML, fill defaults, validate against ray-schema.json (Ray's own code)."""
    from ray.autoscaler._private import commands, providers

    config = yaml.safe_load(path.read_text())
    aws = providers._NODE_PROVIDERS["aws"]
    with mock.patch.dict(providers._NODE_PROVIDERS, {"aws": lambda provider_config: _OfflineProvider}):
        assert providers._NODE_PROVIDERS["aws"] is not aws
        return commands._bootstrap_config(config, no_config_cache=True)


def _commands(config: dict, key: str) -> str:
    return "\n".join(config[key])


def _check_mlflow_server(config: dict, artifacts_prefix: str, head_ip: str) -> None:
    """An MLflow server on the head: basic-auth, sqlite, artifacts proxied to shared storage, on the head's address
    only, with its own PID recorded and a `ray stop` (what `ray down` runs on the head) that stops it first."""
    start = config["head_start_ray_commands"]
    line = next(line for line in start if "mlflow server" in line)
    assert "--app-name basic-auth" in line and "--backend-store-uri sqlite:///" in line
    assert f"--artifacts-destination {artifacts_prefix}" in line
    assert "--host $SCOREAUG_HEAD_IP --port 5000" in line and "0.0.0.0" not in line
    # `... & echo $!` must background mlflow itself: the part before `&` is one simple command, not an and-list.
    background = line.split(" & echo $! > ~/mlflow/server.pid")[0].rsplit(";", 1)[1]
    assert "nohup mlflow server" in background and "&&" not in background and "||" not in background
    assert any(f"head_ip={head_ip}" in c and "SCOREAUG_TRACKING_URI=http://$head_ip:5000" in c for c in start)
    assert start[0] == ". ~/.scoreaug.env && ray stop"  # the `ray` function of ~/.scoreaug.env stops MLflow too
    setup = _commands(config, "head_setup_commands")
    assert '"mlflow[auth]"' in setup and "chmod 700 ~/mlflow" in setup and "umask 077" in setup
    assert "mlflow server" not in _commands(config, "worker_start_ray_commands")


def _check_common(config: dict) -> None:
    import ray

    assert ray.__version__ == "2.60.0"
    pinned = f'"ray[default,train,tune]=={ray.__version__}"'
    assert pinned.strip('"') in (ROOT / "pyproject.toml").read_text()
    setup = _commands(config, "setup_commands")
    assert pinned in setup  # the same Ray on every node as on the machine that submits
    assert "pip install -q torch==2.13.0" in setup  # torch before the project: the project asks only torch>=2.4
    assert config["file_mounts"]["~/scoreaug-study"] == "." and "pip install -q -e ~/scoreaug-study" in setup
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "chmod 600 ~/.ray/auth_token" in setup  # rsync copies the token world-readable if it is so locally
    assert "python3-venv" in setup  # `python3 -m venv` fails on a stock Ubuntu without it
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):  # token auth on every node
        start = next(c for c in config[key] if "ray start" in c)
        assert "export RAY_AUTH_MODE=token" in start, start
        # A hard limit on open files below 65536 (20,000 seen) must not stop Ray from starting.
        assert "{ ulimit -n 65536 2>/dev/null || ulimit -n hard; } && ray start" in start, start
    # A GPU worker that cannot use its GPU fails its setup, on AWS and on-prem alike.
    assert "nvidia-smi -L" in _commands(config, "worker_setup_commands")
    assert "torch.cuda.is_available()" in _commands(config, "worker_setup_commands")
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start


def test_cluster_yaml_passes_ray_validation_and_keeps_the_contract():
    config = _bootstrap(CLUSTER_YAML)
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    # Trial drivers run on the head only; the head trains nothing.
    assert head["resources"].get("trial_driver", 0) >= 1 and head["resources"]["CPU"] == 0
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    assert workers and all("trial_driver" not in t["resources"] for t in workers.values())
    # Autoscaling GPU workers: a single-GPU and an 8-GPU type, none kept running when idle.
    assert all(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    assert {t["resources"]["GPU"] for t in workers.values()} >= {1, 8}
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers.values())
    # cifar10.yaml's trial (8 workers x 8 CPU x 1 GPU) fits the 8-GPU type, one worker fits the 1-GPU type.
    study = load_study_config(str(ROOT / "study" / "configs" / "cifar10.yaml")).resources
    assert any(t["resources"]["GPU"] >= study.num_workers * study.gpus_per_worker
               and t["resources"]["CPU"] >= study.num_workers * study.cpus_per_worker for t in workers.values())
    assert study.autoscaling
    _check_common(config)
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in _commands(config, "head_start_ray_commands")
    _check_mlflow_server(config, "$SCOREAUG_S3/", head_ip="$(hostname -I | awk '{print $1}')")
    assert "export SCOREAUG_S3=s3://" in _commands(config, "setup_commands")
    # Nothing reachable from the internet but the SSH rule Ray adds itself.
    for rule in config["provider"]["security_group"]["IpPermissions"]:
        public = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", []))
        assert not public or (rule["FromPort"], rule["ToPort"]) == (22, 22), rule


def test_cluster_local_yaml_passes_ray_validation():
    config = _bootstrap(CLUSTER_LOCAL_YAML)
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and len(config["provider"]["worker_ips"]) >= 1
    # On-prem node types come from `ray start`: trial_driver and no CPU on the head, nothing extra on workers.
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--resources='{\"trial_driver\": 64}'" in head_start and "--num-cpus=0" in head_start
    assert "trial_driver" not in _commands(config, "worker_start_ray_commands")
    assert "--node-ip-address=$SCOREAUG_HEAD_IP" in head_start  # Ray and MLflow on provider.head_ip
    _check_common(config)
    _check_mlflow_server(config, "$SCOREAUG_SHARED/", head_ip="$(~/venv/bin/python -c")
    assert "ray_bootstrap_config.yaml" in next(c for c in config["head_start_ray_commands"] if "head_ip=" in c)


@pytest.mark.parametrize("path", [CLUSTER_YAML, CLUSTER_LOCAL_YAML], ids=lambda p: p.name)
def test_head_records_mlflows_own_pid_and_ray_stop_stops_it(path, tmp_path):
    """The head's own shell lines, run in bash with stand-ins for `mlflow` and `ray`: the PID file holds the MLflow
    process itself, the login file is private, and `ray stop` in a shell that read ~/.scoreaug.env (as `ray down`'s
    login shell does) stops MLflow before it runs Ray's own `ray stop`."""
    config = yaml.safe_load(path.read_text())
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    (home / "venv" / "bin").mkdir(parents=True)
    (home / "venv" / "bin" / "python").symlink_to(sys.executable)
    bin_dir.mkdir()
    (bin_dir / "mlflow").write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    (bin_dir / "ray").write_text('#!/bin/sh\necho "$@" >> "$HOME/ray-calls"\n')
    for stand_in in bin_dir.iterdir():
        stand_in.chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}

    def bash(command: str) -> None:
        done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stdout, done.stderr)

    (home / ".scoreaug.env").write_text(f"export SCOREAUG_SHARED={tmp_path}/shared SCOREAUG_S3={tmp_path}/s3\n"
                                        "export SCOREAUG_HEAD_IP=127.0.0.1\n")
    bash("mkdir -p ~/mlflow && chmod 700 ~/mlflow")  # head_setup_commands[0] without its pip install
    for command in config["head_setup_commands"][1:]:
        bash(command)
    assert oct((home / "mlflow" / "auth.env").stat().st_mode & 0o777) == "0o600"
    bash(next(c for c in config["head_start_ray_commands"] if "mlflow server" in c))
    pid = int((home / "mlflow" / "server.pid").read_text())
    try:
        deadline = time.time() + 10
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        while cmdline[0] in ("bash", "nohup", "") and time.time() < deadline:  # the same PID, before (or while) it execs mlflow
            time.sleep(0.05)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert cmdline[1:4] == [str(bin_dir / "mlflow"), "server", "--app-name"], cmdline  # mlflow, not a subshell
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
        assert any(e.startswith("MLFLOW_AUTH_ADMIN_PASSWORD=") and len(e) > 40 for e in environ)
        bash(config["head_start_ray_commands"][0])  # `. ~/.scoreaug.env && ray stop`

        def stopped() -> bool:  # gone, or a zombie nobody has reaped yet
            try:
                return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                return True

        deadline = time.time() + 30
        while not stopped() and time.time() < deadline:  # polling the process state, not a fixed wait
            time.sleep(0.05)
        assert stopped()
        assert (home / "ray-calls").read_text() == "stop\n" and not (home / "mlflow" / "server.pid").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_launch_test_changes_only_addresses_user_key_shared_folder_and_head_cpus():
    """tests/cluster_launch/launch.py runs cluster-local.yaml as shipped, but for what must differ on one machine."""
    spec = importlib.util.spec_from_file_location("cluster_launch", ROOT / "tests" / "cluster_launch" / "launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)

    shipped = yaml.safe_load(CLUSTER_LOCAL_YAML.read_text())
    derived = launch.derive_config(shipped, user="node", key="/tmp/key", shared="/tmp/shared", head_cpus=2)
    changed = {key for key in shipped if derived[key] != shipped[key]}
    assert changed == {"provider", "auth", "setup_commands", "head_start_ray_commands"}
    assert derived["provider"] == {**shipped["provider"], "head_ip": "127.0.0.1", "worker_ips": []}
    assert derived["auth"] == {"ssh_user": "node", "ssh_private_key": "/tmp/key"}
    for key, old, new in (("setup_commands", "/mnt/shared/scoreaug", "/tmp/shared"),
                          ("head_start_ray_commands", "--num-cpus=0", "--num-cpus=2")):
        assert [c.replace(old, new) for c in shipped[key]] == derived[key] != shipped[key]


def test_bad_cluster_yaml_is_rejected_by_the_same_validation(tmp_path):
    """The check above can fail: a key the schema does not know is refused."""
    import jsonschema

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["available_node_types"][config["head_node_type"]]["resourcez"] = {}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(jsonschema.ValidationError):
        _bootstrap(bad)


@pytest.mark.parametrize("storage, kind", [
    ("s3://my-bucket/scoreaug/tune", "s3 object store, shared by every node"),
    ("gs://my-bucket/scoreaug/tune", "gs object store, shared by every node"),
    ("/mnt/shared/scoreaug/tune", "shared path: every node must see it at this path"),
])
def test_dry_run_shows_shared_storage_and_tracking_server(storage, kind, capsys):
    from study.run import main

    argv = ["--dry-run", "--config", str(ROOT / "study" / "configs" / "cifar10.yaml"),
            "--set", f"storage_path={storage}", "--set", "tracking.uri=http://10.0.0.5:5000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"  tune storage: {storage} ({kind}" in out
    assert "  tracking: http://10.0.0.5:5000 (experiment cifar10)" in out
    assert "8 worker(s) x (8 CPU, 1 GPU)" in out and "(resources are checked against the cluster at launch)" in out


def test_storage_path_is_absolute_on_the_driver_and_a_bucketless_uri_is_refused(tmp_path, monkeypatch, capsys):
    from study.run import main

    monkeypatch.chdir(tmp_path)
    assert load_study_config(GRID_CONFIG, ["storage_path=shared/tune"]).tune_storage == str(tmp_path / "shared" / "tune")
    assert load_study_config(GRID_CONFIG, ["storage_path=s3://b/p"]).tune_storage == "s3://b/p"
    assert "local to this machine" in (main(["--dry-run"]) == 0 and capsys.readouterr().out)
    assert main(["--dry-run", "--set", "storage_path=s3://"]) == 2
    assert "storage_path: must be a path shared by every node" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# A trial across nodes, losing one of them

def _train_workers(state) -> dict[str, str]:
    """Alive Ray Train worker actors (id -> node id), from Ray's state API."""
    actors = state.list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], limit=100)
    return {a["actor_id"]: a["node_id"] for a in actors}


def _first_report_seen(output: Path) -> bool:
    from study.tracking.ledger import load_records

    return any(r.get("last_step", -1) >= 128 for r in load_records(output, "search").values())


@pytest.mark.slow
def test_ddp_trial_spans_nodes_and_survives_losing_one(ray_cluster, tmp_path):
    """Two DDP ranks on two worker nodes; one node is removed mid-trial; the trial resumes on what is left."""
    from ray.util import state

    output, shared = tmp_path / "study", tmp_path / "shared"  # shared: what an NFS mount is on a real cluster
    total_kimg = 1.024
    overrides = [f"trial.{s}" for s in TINY_TRIAL] + [
        "name=multinode", f"output={output}", f"storage_path={shared}", "regimes=[1.0]", "search.trials_per_regime=2", "search.metric=test_loss",
        "scheduler.kind=none", "confirm.seeds=0", f"trial.train.total_kimg={total_kimg}",
        "resources.num_workers=2", "resources.cpus_per_worker=1", "resources.max_failures=2", "resources.max_concurrent=1",
    ]
    config = load_study_config(GRID_CONFIG, overrides)
    worker_nodes = {node.node_id: node for node in ray_cluster.worker_nodes}
    assert len(worker_nodes) == WORKER_NODES
    seen: dict = {}
    study_ended = threading.Event()  # the watcher looks until the study ends, however slow a loaded machine is

    def remove_a_node_mid_trial():
        while not study_ended.is_set() and "removed" not in seen:
            placed = _train_workers(state)
            if len(placed) == 2 and _first_report_seen(output):  # trials run one at a time: these are one trial's
                seen["first_group"] = placed
                seen["removed"] = sorted(placed.values())[0]
                ray_cluster.remove_node(worker_nodes[seen["removed"]], allow_graceful=False)
            time.sleep(0.1)  # polling Ray's state for an event, not waiting a fixed time
        while not study_ended.is_set() and "removed" in seen:  # the same trial's next worker group
            fresh = {a: n for a, n in _train_workers(state).items() if a not in seen["first_group"]}
            if len(fresh) == 2:
                seen["second_group"] = fresh
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=remove_a_node_mid_trial, daemon=True)
    watcher.start()
    try:
        run_study(config, log=lambda *_: None)
    finally:
        study_ended.set()
        watcher.join(timeout=60)
        while len(ray_cluster.worker_nodes) < WORKER_NODES:  # give the session back its shape
            ray_cluster.add_node(num_cpus=1)
        ray_cluster.wait_for_nodes()

    # The two DDP ranks ran on two different worker nodes (the head has no CPU), and one of those nodes was lost;
    # the restarted worker group ran on the two nodes left.
    assert "removed" in seen, "the trial never had two workers placed while it was running"
    first, second = set(seen["first_group"].values()), set(seen.get("second_group", {}).values())
    assert len(first) == 2 and first <= set(worker_nodes), seen
    assert len(second) == 2 and seen["removed"] not in second and second <= set(worker_nodes), seen

    table = pq.read_table(output / "results.parquet").to_pylist()
    assert len(table) == 2 and all(r["status"] == "completed" and r["kimg"] == pytest.approx(total_kimg) for r in table)

    # Tune's own log of every report: each worker process marks its first report with `first_step_at`. The trial
    # that lost a node had a second worker group, which resumed from a checkpoint, not from zero.
    restarted = []
    steps = list(range(128, round(total_kimg * 1000) + 1, 128))
    # Tune's results and Train's checkpoints (written by workers on the worker nodes) are in the shared storage.
    assert not (output / "tune").exists() and len(list(shared.glob("train-*/checkpoint_*"))) >= 2
    result_files = list((shared / "search").glob("*/result.json"))
    assert len(result_files) == 2
    for result_file in result_files:
        reports = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        kimgs = [round(r["kimg"] * 1000) for r in reports]
        starts = [i for i, r in enumerate(reports) if r.get("first_step_at")]
        assert starts[0] == 0 and kimgs[-1] == steps[-1], kimgs
        if len(starts) > 1:
            resumed_at = kimgs[starts[1]]
            assert resumed_at > 128 and resumed_at - 128 in kimgs[: starts[1]], kimgs  # from a reported checkpoint
            assert kimgs[starts[1]:] == list(range(resumed_at, steps[-1] + 1, 128)), kimgs
            restarted.append(reports[0]["trial_id"])
        else:
            assert kimgs == steps, kimgs
    assert len(restarted) == 1, "exactly one trial should have lost a node and resumed"

    # MLflow: the resumed trial is one child run holding one continuous history, no duplicate and no gap.
    client = MlflowClient(tracking_uri=config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("multinode").experiment_id], max_results=100)
    children = {r.data.tags["trial_id"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(children) == 2
    run_id = children[restarted[0]].info.run_id
    assert run_id == next(r["mlflow_run_id"] for r in table if r["trial_id"] == restarted[0])
    history = client.get_metric_history(run_id, "kimg")
    assert [m.step for m in history] == steps
    assert all(m.value == pytest.approx(m.step / 1000) for m in history)
    assert [m.step for m in client.get_metric_history(run_id, "test_loss")] == steps
    assert [a.path for a in client.list_artifacts(run_id, "samples")]  # grids read back from the shared storage


# ---------------------------------------------------------------------------------------------------------------
# A study tracked by a real MLflow server, as on the cluster's head

@pytest.mark.slow
def test_study_tracks_to_an_mlflow_server(ray_session, tmp_path):
    """`mlflow server` (sqlite backend, proxied artifacts) on 127.0.0.1; a `study/run.py --address` job logs to it."""
    artifacts = tmp_path / "server-artifacts"
    with mlflow_server(tmp_path / "server.db", artifacts, free_port(), tmp_path / "mlflow-server.log") as url:
        output = tmp_path / "study"
        sets = [f"trial.{s}" for s in TINY_TRIAL] + [
            "name=served", f"output={output}", "regimes=[1.0]", "search.trials_per_regime=2", "trial.eval.fid=true",
            "scheduler.kind=none", "confirm.seeds=0", "resources.max_concurrent=2", f"tracking.uri={url}",
        ]
        address = ray_session.get_runtime_context().gcs_address
        driver = subprocess.run(
            [sys.executable, "study/run.py", "--config", GRID_CONFIG, "--address", address] + sum((["--set", s] for s in sets), []),
            cwd=ROOT, capture_output=True, text=True, timeout=400, env={**os.environ, "RAY_AUTH_MODE": "token"})
        assert driver.returncode == 0, (driver.stdout + driver.stderr)[-3000:]
        assert f"tracking: {url} (experiment served)" in driver.stdout

        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("served")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == 1 and len(children) == 2
        assert parents[0].info.status == "FINISHED" and parents[0].data.tags["dataset"] == "digits"
        for child in children:
            assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert child.data.tags["status"] == "completed" and child.info.status == "FINISHED"
            for metric in ("train_loss", "test_loss", "loss_gap", "kimg"):
                assert [m.step for m in client.get_metric_history(child.info.run_id, metric)] == [128, 256], metric
            assert [m.step for m in client.get_metric_history(child.info.run_id, "fid")] == [256]
            assert child.data.metrics["fid"] > 0
            assert [a.path for a in client.list_artifacts(child.info.run_id, "samples")]
        assert {"results.parquet", "study_config.yaml", "report"} <= {a.path for a in client.list_artifacts(parents[0].info.run_id)}
        # Artifacts went through the server to its --artifacts-destination (S3 on a cluster), none to the study
        # folder, and no local tracking store was made.
        assert list(artifacts.rglob("results.parquet")) and list(artifacts.rglob("kimg-*.png"))
        assert not (output / "mlflow.db").exists() and not list((output / "mlartifacts").rglob("*.*"))
