"""Shared fixtures: one local Ray instance per test session, started only by tests that need it."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Tiny trial settings shared by tests: a few hundred images, no FID unless a test asks for it.
TINY_TRIAL = [
    "dataset=digits", "model.preset=digits-tiny", "train.batch_size=32", "train.total_kimg=0.256",
    "eval.every_kimg=0.128", "eval.loss_images=32", "eval.num_samples=32", "eval.sampler_steps=4",
    "eval.grid_images=16", "eval.fid=false", "runtime.threads=1",
]


@pytest.fixture(scope="session")
def ray_session():
    """A 2-CPU local Ray with the trial-driver resource and the dashboard (Tune needs it to free stopped trials)."""
    import ray

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    ray.init(num_cpus=2, resources={"trial_driver": 2}, include_dashboard=True, dashboard_host="127.0.0.1",
             log_to_driver=False, configure_logging=True, logging_level="ERROR")
    yield ray
    ray.shutdown()
