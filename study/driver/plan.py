"""The study plan, checked against the cluster before anything is launched.

An infeasible plan (a worker larger than every node, GPUs where there are none, more workers
than the cluster holds) is an error naming what is missing: Ray would otherwise wait forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from study.phases.cells import Cell, capacity_values, study_cells
from study.config import StudyConfig
from study.driver.cost import describe_cost, describe_design_cost
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
    design_trials: int = 0  # an adaptive design's budget: it may stop earlier

    @property
    def total_trials(self) -> int:
        return len(self.cells) * self.trials_per_regime + self.confirmation_trials + self.design_trials


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
    searched = config.kind in ("search", "searched-design")
    cells = (study_cells(config) if searched or config.ablation else []) if cells is None else cells
    r = config.resources
    concurrency = check_fits(config, nodes) if nodes is not None else (r.max_concurrent or 1)
    ablation = config.ablation
    return Plan(
        cells=cells,
        # an ablation runs each arm once per seed per regime, with no search and no confirmation
        trials_per_regime=len(ablation.arms) * ablation.seeds if ablation else config.search.trials_per_regime,
        confirmation_trials=len(cells) * (2 + len(config.confirm.arms)) * config.confirm.seeds if config.kind == "search" else 0,
        cpus_per_trial=r.num_workers * r.cpus_per_worker,
        gpus_per_trial=r.num_workers * r.gpus_per_worker,
        concurrency=concurrency,
        design_trials=config.design.max_trials * len(capacity_values(config)) if config.design else 0,
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


def _study_line(config: StudyConfig, plan: Plan) -> str:
    """What the study runs, in one line: its trials and how they are chosen."""
    study = f"study {config.name}: dataset {config.trial.dataset}, "
    if config.ablation:
        return (study + f"{plan.total_trials} trials (ablation: {len(config.ablation.arms)} arms x {config.ablation.seeds} "
                "seeds per regime, no search)")
    if config.design:
        from study.phases.adaptive import size_range

        d, (low, high) = config.design, size_range(config)
        arms = ["baseline", *config.confirm.arms] + (["best (searched first)"] if d.searched_arm else [])
        return (study + f"up to {plan.total_trials} trials (adaptive design: arms {', '.join(arms)}; sizes placed in "
                f"{low}-{high} images; at most {d.max_trials} design trials{' per capacity' if config.capacities else ''}, fewer "
                f"once each multiplier's 95% interval spans {math.exp(d.target_log_width):.2f}x; a trial copying "
                f"{d.saturation:g} stops as decided)")
    return (study + f"{plan.total_trials} trials ({plan.trials_per_regime} searched per regime incl. the baseline, "
            f"{plan.confirmation_trials} confirmation runs"
            + (f": best and baseline beside fixed arms {', '.join(config.confirm.arms)}" if config.confirm.arms else "") + ")")


def _search_line(config: StudyConfig) -> str:
    if config.ablation:
        return f"  arms: {', '.join(config.ablation.arms)}"
    if config.kind == "design":
        return "  search: none (the arms are fixed configs)"
    search = config.search
    return (f"  search: {search.space} (Optuna {'multi-objective ' if search.objectives else ''}TPE, seed {search.seed}) to "
            f"{search.mode}imize {' and '.join(search.objective_names)}"
            + (f" subject to memorization_max <= {search.max_memorization:g}" if search.max_memorization is not None else "")
            + f"; early stopping: {config.scheduler.kind} on {config.scheduler.metric}")


def describe(config: StudyConfig, plan: Plan) -> str:
    r = config.resources
    lines = [_study_line(config, plan)]
    for cell in plan.cells:
        size = f"{cell.images} images" if cell.regime_images else f"{cell.regime_fraction:g} of the training set = {cell.images} images"
        lines.append(f"  regime {cell.name}: {size}" + (f", capacity {cell.capacity}" if cell.capacity else ""))
    lines += [
        f"  per trial: {r.num_workers} worker(s) x ({r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU)"
        f"{' in the reused trial process' if trains_in_trial_process(r.model_dump()) else ''}, "
        f"{config.trial.train.total_kimg:g} kimg, eval at kimg "
        f"{', '.join(f'{k:g}' for k in config.trial.eval.points_kimg(config.trial.train.total_kimg))}"
        f" (sample metrics {'at each' if config.trial.eval.fid_at == 'every' else 'at the last'})",
        _search_line(config),
        f"  concurrency: {plan.concurrency} trial(s) at once",
        f"  output: {config.output_dir}",
        f"  tune storage: {config.tune_storage} ({storage_kind(config)})",
        f"  optuna storage: {config.optuna_url}",
        f"  tracking: {config.tracking_uri} (experiment {config.experiment_name})",
    ]
    cost = (describe_design_cost(config, len(plan.cells) * plan.trials_per_regime, plan.concurrency) if config.design
            else describe_cost(config, plan.total_trials))
    return "\n".join(lines + ([cost] if cost else []))
