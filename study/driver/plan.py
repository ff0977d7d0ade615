"""The study plan, checked against the cluster before anything is launched.

An infeasible plan (a worker larger than every node, GPUs where there are none, more workers
than the cluster holds) is an error naming what is missing: Ray would otherwise wait forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from study.phases.cells import Cell, study_cells
from study.config import StudyConfig
from study.driver.cost import describe_cost
from study.driver.trainable import trains_in_trial_process


class PlanError(RuntimeError):
    """The resources asked for cannot be met; the message says which and how to fix it."""


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float


@dataclass(frozen=True)
class Plan:
    cells: list[Cell]  # regimes, crossed with capacities where the study has that axis
    trials_per_regime: int  # per cell
    confirmation_trials: int
    cpus_per_trial: float
    gpus_per_trial: float
    concurrency: int

    @property
    def total_trials(self) -> int:
        return len(self.cells) * self.trials_per_regime + self.confirmation_trials


def check_fits(config: StudyConfig, nodes: list[Node]) -> int:
    """How many trials fit at once; raises PlanError when not even one does."""
    r = config.resources
    if not nodes:
        raise PlanError("the Ray cluster reports no alive nodes")
    fitting = [n for n in nodes if n.cpus >= r.cpus_per_worker and n.gpus >= r.gpus_per_worker]
    total_gpus = sum(n.gpus for n in nodes)
    if r.gpus_per_worker > 0 and total_gpus == 0:
        raise PlanError(f"resources.gpus_per_worker={r.gpus_per_worker:g} but the cluster has no GPUs; "
                        "set resources.gpus_per_worker=0 or run on a GPU cluster (see cluster.yaml)")
    if not fitting:
        biggest = max(nodes, key=lambda n: (n.gpus, n.cpus))
        raise PlanError(f"no node fits one worker ({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU); "
                        f"the largest has {biggest.cpus:g} CPU, {biggest.gpus:g} GPU: lower resources.cpus_per_worker/gpus_per_worker")
    slots = sum(min(math.floor(n.cpus / r.cpus_per_worker),
                    math.floor(n.gpus / r.gpus_per_worker) if r.gpus_per_worker else math.inf) for n in fitting)
    if slots < r.num_workers:
        raise PlanError(f"resources.num_workers={r.num_workers} needs {r.num_workers * r.cpus_per_worker:g} CPU"
                        + (f" and {r.num_workers * r.gpus_per_worker:g} GPU" if r.gpus_per_worker else "")
                        + f" but the cluster fits only {slots} such worker(s); lower resources.num_workers")
    concurrency = slots // r.num_workers
    if r.max_concurrent:
        concurrency = min(concurrency, r.max_concurrent)
    return max(1, concurrency)


def make_plan(config: StudyConfig, nodes: list[Node] | None, cells: list[Cell] | None = None) -> Plan:
    """The plan; with `nodes` None (an autoscaling cluster not yet up) concurrency is max_concurrent or 1."""
    cells = study_cells(config) if cells is None else cells
    r = config.resources
    concurrency = check_fits(config, nodes) if nodes is not None else (r.max_concurrent or 1)
    ablation = config.ablation
    return Plan(
        cells=cells,
        # an ablation runs each arm once per seed per regime, with no search and no confirmation
        trials_per_regime=len(ablation.arms) * ablation.seeds if ablation else config.search.trials_per_regime,
        confirmation_trials=0 if ablation else len(cells) * (2 + len(config.confirm.arms)) * config.confirm.seeds,
        cpus_per_trial=r.num_workers * r.cpus_per_worker,
        gpus_per_trial=r.num_workers * r.gpus_per_worker,
        concurrency=concurrency,
    )


def dry_run_plan(config: StudyConfig, nodes: list[Node] | None, data_problem: bool) -> tuple[Plan, list[Exception]]:
    """The plan to show even where it cannot run: resources that do not fit are a problem, and the plan is shown
    as for a cluster; cells that need the missing data are left out when that data is already a problem."""
    from trainables.data import DatasetError

    try:
        return make_plan(config, nodes), []
    except PlanError as err:
        return make_plan(config, None), [err]
    except DatasetError as err:  # a size the pool lacks, or no data to count the pool in
        return make_plan(config, None, cells=[]), [] if data_problem else [err]


def storage_kind(config: StudyConfig) -> str:
    """How the nodes share Tune/Train storage: every worker writes checkpoints there and the driver reads them."""
    if "://" in config.tune_storage:
        scheme = config.tune_storage.split("://", 1)[0]
        return f"{scheme} object store, shared by every node" if scheme != "file" else "local file URI: one machine only"
    if config.storage_path:
        return "shared path: every node must see it at this path, e.g. an NFS mount"
    return "local to this machine: on a multi-node cluster set storage_path to s3://, gs:// or an NFS path"


def describe(config: StudyConfig, plan: Plan) -> str:
    r = config.resources
    if config.ablation:
        lines = [f"study {config.name}: dataset {config.trial.dataset}, {plan.total_trials} trials (ablation: "
                 f"{len(config.ablation.arms)} arms x {config.ablation.seeds} seeds per regime, no search)"]
    else:
        lines = [f"study {config.name}: dataset {config.trial.dataset}, {plan.total_trials} trials "
                 f"({plan.trials_per_regime} searched per regime incl. the baseline, {plan.confirmation_trials} confirmation runs"
                 + (f": best and baseline beside fixed arms {', '.join(config.confirm.arms)}" if config.confirm.arms else "") + ")"]
    for cell in plan.cells:
        size = f"{cell.images} images" if cell.regime_images else f"{cell.regime_fraction:g} of the training set = {cell.images} images"
        lines.append(f"  regime {cell.name}: {size}" + (f", capacity {cell.capacity}" if cell.capacity else ""))
    lines += [
        f"  per trial: {r.num_workers} worker(s) x ({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU)"
        f"{' in the reused trial process' if trains_in_trial_process(r.model_dump()) else ''}, "
        f"{config.trial.train.total_kimg:g} kimg, eval at kimg "
        f"{', '.join(f'{k:g}' for k in config.trial.eval.points_kimg(config.trial.train.total_kimg))}"
        f" (sample metrics {'at each' if config.trial.eval.fid_at == 'every' else 'at the last'})",
        f"  arms: {', '.join(config.ablation.arms)}" if config.ablation else
        f"  search: {config.search.space} (Optuna {'multi-objective ' if config.search.objectives else ''}TPE, seed "
        f"{config.search.seed}) to {config.search.mode}imize {' and '.join(config.search.objective_names)}"
        + (f" subject to memorization_max <= {config.search.max_memorization:g}" if config.search.max_memorization is not None else "")
        + f"; early stopping: {config.scheduler.kind} on {config.scheduler.metric}",
        f"  concurrency: {plan.concurrency} trial(s) at once",
        f"  output: {config.output_dir}",
        f"  tune storage: {config.tune_storage} ({storage_kind(config)})",
        f"  optuna storage: {config.optuna_url}",
        f"  tracking: {config.tracking_uri} (experiment {config.experiment_name})",
    ]
    cost = describe_cost(config, plan.total_trials)
    return "\n".join(lines + ([cost] if cost else []))
