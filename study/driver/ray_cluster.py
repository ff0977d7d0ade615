"""Ray for a study: which cluster it joins (one rule), the local Ray it starts otherwise, and the nodes it plans on."""

from __future__ import annotations

import os

from study.config import StudyConfig
from study.driver.plan import Node
from study.driver.state import StudyError
from study.driver.trainable import TRIAL_DRIVER_RESOURCE


def ray_address(address: str | None) -> str | None:
    """`--address`, else $RAY_ADDRESS, else None: a study starts its own local Ray and never joins another."""
    return address or os.environ.get("RAY_ADDRESS") or None


def runs_remotely(config: StudyConfig, address: str | None) -> bool:
    """Whether the trials run on a cluster (whose nodes, not this machine, must hold the data and devices)."""
    return bool(ray_address(address)) or config.resources.autoscaling


def start_ray(config: StudyConfig, address: str | None, concurrency_hint: int, log=print) -> bool:
    """Join or start Ray; returns whether this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():  # an embedding program (or a test session) owns Ray
        return False
    joined = ray_address(address)
    if joined:
        ray.init(address=joined, log_to_driver=False, logging_level="ERROR")  # Ray's and Tune's INFO lines stay off the terminal
        if TRIAL_DRIVER_RESOURCE not in ray.cluster_resources():
            raise StudyError(f"the cluster at {joined} has no {TRIAL_DRIVER_RESOURCE!r} resource; start its head with "
                             "--resources='{\"trial_driver\": 64}' (cluster.yaml does)")
        return True
    cpus = config.resources.num_cpus or os.cpu_count() or 1
    # Ray Train's controller polls its workers at this interval (default 2 s): every trial waits for a poll to start
    # its worker group and another to see it finish. Set before Ray starts, so its processes inherit it.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # The dashboard must run: Tune frees an early-stopped trial's worker placement group through its state API.
    # address="local": a Ray already running on this machine (`ray start`, `ray up` on localhost) is never joined
    # by accident; --address auto or RAY_ADDRESS joins it on purpose.
    log(f"starting a local Ray with {cpus} CPUs (a Ray cluster already running here is not joined; --address auto joins it)")
    ray.init(address="local", num_cpus=cpus, resources={TRIAL_DRIVER_RESOURCE: max(1, concurrency_hint)}, include_dashboard=True,
             dashboard_host="127.0.0.1", log_to_driver=False, configure_logging=True, logging_level="ERROR")
    return True


def cluster_nodes() -> list[Node]:
    import ray

    return [Node(cpus=n["Resources"].get("CPU", 0.0), gpus=n["Resources"].get("GPU", 0.0)) for n in ray.nodes() if n["Alive"]]


def local_nodes(config: StudyConfig) -> list[Node]:
    import torch

    return [Node(cpus=float(config.resources.num_cpus or os.cpu_count() or 1), gpus=float(torch.cuda.device_count()))]


def planning_nodes(config: StudyConfig, address: str | None) -> list[Node] | None:
    """The nodes a plan is checked against before Ray starts: this machine's, or None for a cluster (checked at launch)."""
    return None if runs_remotely(config, address) else local_nodes(config)
