"""The Tune trainable: one trial = one Ray Train `TorchTrainer` run of the worker loop.

The trial's own process only supervises: it holds a tiny custom resource (`trial_driver`),
never a CPU, so on a small machine trial drivers cannot starve their own workers.
"""

from __future__ import annotations

import copy

from trainables.config import TrialConfig, set_by_path

TRIAL_DRIVER_RESOURCE = "trial_driver"


def trial_config(base: dict, suggestion: dict) -> dict:
    """The base trial config with the regime, the seed and the searched overrides applied, validated."""
    tree = copy.deepcopy(base)
    tree["regime_fraction"] = suggestion["regime_fraction"]
    tree["seed"] = suggestion.get("seed", 0)
    for path, value in suggestion["overrides"].items():
        set_by_path(tree, path, value)
    return TrialConfig.model_validate(tree).model_dump()


def make_trainable(base_trial: dict, resources: dict, storage_path: str):
    """A Tune function trainable closed over the study's base config and resources."""

    def scoreaug_trial(suggestion: dict) -> None:
        from ray import tune
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        from trainables.ray_worker import train_worker

        config = trial_config(base_trial, suggestion)
        use_gpu = resources["gpus_per_worker"] > 0
        per_worker = {"CPU": resources["cpus_per_worker"]}
        if use_gpu:
            per_worker["GPU"] = resources["gpus_per_worker"]
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=config,
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=resources["num_workers"], use_gpu=use_gpu, resources_per_worker=per_worker),
            run_config=RunConfig(
                # A deterministic name: a restarted trial finds its own checkpoints and resumes from them.
                name=f"train-{tune.get_context().get_trial_id()}",
                storage_path=storage_path,
                callbacks=[TuneReportCallback()],
                failure_config=FailureConfig(max_failures=resources["max_failures"],
                                             controller_failure_limit=resources["controller_failure_limit"]),
                checkpoint_config=CheckpointConfig(num_to_keep=config["train"]["checkpoints_kept"]),
            ),
        )
        trainer.fit()

    return scoreaug_trial
