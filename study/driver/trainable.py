"""The Tune trainable: one trial = one Ray Train `TorchTrainer` run of the worker loop.

Two shapes, one loop:
- a worker group (DDP over `num_workers`): the trial's own process only supervises. It holds a tiny custom
  resource (`trial_driver`), never a CPU, so on a small machine trial drivers cannot starve their own workers.
- one worker in the trial's own process (Ray Train's local mode, `num_workers=0`): Tune reuses that process
  from trial to trial, so a trial starts warm (torch imported, data cached) instead of spawning a controller
  and a worker and importing torch again, which cost 17.5 s per trial on a 2-core machine (bench/study_overhead.py
  with resources.reuse_trial_process=false; docs/results.md, "What the studies cost").
"""

from __future__ import annotations

from study.phases.suggestion import Suggestion

TRIAL_DRIVER_RESOURCE = "trial_driver"


def trains_in_trial_process(resources: dict) -> bool:
    return bool(resources["reuse_trial_process"]) and resources["num_workers"] == 1


def trial_resources(resources: dict) -> dict:
    """What Tune reserves for the trial's own process."""
    if not trains_in_trial_process(resources):
        return {"CPU": 0, TRIAL_DRIVER_RESOURCE: 1}
    own = {"CPU": resources["cpus_per_worker"]}
    if resources["gpus_per_worker"] > 0:
        own["GPU"] = resources["gpus_per_worker"]
    return own


def make_trainable(base_trial: dict, resources: dict, storage_path: str):
    """A Tune function trainable closed over the study's base config and resources."""

    def scoreaug_trial(suggestion: dict) -> None:  # Tune passes the suggestion as a dict
        from ray import tune
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        from trainables.failures import deterministic_kind, failure_report
        from trainables.ray_worker import train_in_trial_process, train_worker

        try:
            config = Suggestion.from_tune(suggestion).trial_config(base_trial)
        except Exception as err:  # a suggestion the trial config rejects fails the same way on every retry
            kind = deterministic_kind(err)
            if kind is None:
                raise
            tune.report(failure_report(err, kind))
            return
        use_gpu = resources["gpus_per_worker"] > 0
        in_process = trains_in_trial_process(resources)
        per_worker = {"CPU": resources["cpus_per_worker"]}
        if use_gpu:
            per_worker["GPU"] = resources["gpus_per_worker"]
        trainer = TorchTrainer(
            train_in_trial_process if in_process else train_worker,
            train_loop_config=config,
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=0) if in_process else ScalingConfig(
                num_workers=resources["num_workers"], use_gpu=use_gpu, resources_per_worker=per_worker),
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
