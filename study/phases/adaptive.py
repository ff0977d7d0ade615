"""The adaptive scaling design as a Ray Tune searcher: each trial is placed where it tells most about each arm's
N50 and the data multiplier (study/stats/design.py decides; this module only speaks Tune).

Whenever a trial slot is free, the searcher fits the trials that ended (study/stats/memorization_model.py) and
asks the design for placements, the running ones counted as pending (so a batch does not pile onto one size);
a trial stopped because its answer was decided (study/phases/schedulers.py) enters the fit right-censored.
Each capacity of a capacity-crossed study has a design of its own. Every trial is an ordinary Tune trial:
MLflow, the ledger, resume and failure handling are those of every phase.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field, replace

from ray.tune.search import Searcher
from threadpoolctl import threadpool_limits

from study.config import StudyConfig
from study.contract import Role, Status, baseline_overrides
from study.phases.cells import capacity_label, capacity_values, sized_cell
from study.phases.suggestion import Suggestion
from study.stats import memorization_model as model
from study.stats.running_max import RunningMax
from study.stats.design import Design, Placement, State, StoppingRule, next_round, stop_reason
from trainables.catalog import DATASETS
from trainables.data import DatasetError, pool_size

Capacity = tuple[str, object] | None
# An arm whose trials all fail (they diverge, say) tells nothing about memorization: after this many failures and
# no trial that ended with a value, the design stops placing it, and the report says why it has no N50.
ARM_FAILURE_LIMIT = 2


@dataclass(frozen=True)
class DesignPlan:
    """What the searcher places: arms (name -> trial overrides), the size range, the stopping rule, the slots."""

    arms: dict[str, dict]
    design: Design
    rule: StoppingRule
    slots: int
    total_kimg: float
    seed_offset: int = 0


def size_range(config: StudyConfig) -> tuple[int, int]:
    """[min, max] images: by default one image per class of a labelled dataset (else 2) up to the pool.

    Below the class count a class-balanced subset cannot hold every class: a subset of n images then holds one
    image of each of n classes, in the dataset's seeded class order (trainables/data.py, regime_indices)."""
    design, pool = config.design, pool_size(config.trial.dataset, config.trial.data_path)
    low = design.min_images or DATASETS[config.trial.dataset].classes or 2
    return low, design.max_images or pool


def size_range_problem(config: StudyConfig) -> DatasetError | None:
    """A size range the training pool cannot hold, found before anything starts (a design placing sizes it lacks
    fails at its first trial): max_images above the pool, or min_images leaving no larger size to place. An image
    folder this machine does not see (a cluster's workers hold it) has no pool to count here."""
    low, high = size_range(config)
    pool = pool_size(config.trial.dataset, config.trial.data_path)
    if pool <= 0:
        return None
    if high > pool:
        return DatasetError(f"design.max_images {high} exceeds the training pool of {pool} images of "
                            f"{config.trial.dataset}; set it to at most {pool}, or leave it unset for the whole pool")
    if low >= pool:
        return DatasetError(f"design.min_images {low} leaves no larger size in the training pool of {pool} images of "
                            f"{config.trial.dataset}; set it below {pool}")
    return None


def design_plan(config: StudyConfig, concurrency: int, best: dict | None = None) -> DesignPlan:
    """The study's design: the baseline, `confirm.arms` and (from a search) the best config, as arms."""
    arms = {Role.BASELINE.value: baseline_overrides(config.trial.resolved_model()["dropout"])}
    arms |= {name: dict(overrides) for name, overrides in config.confirm.arms.items()}
    if best is not None:
        arms[Role.BEST.value] = best
    low, high = size_range(config)
    d = config.design
    design = Design(tuple(arms), low, high, Role.BASELINE.value, config.trial.eval.num_samples, d.slope)
    rule = StoppingRule(d.target_log_width, d.max_trials, d.max_kimg)
    return DesignPlan(arms, design, rule, d.slots or concurrency, config.trial.train.total_kimg, d.seed_offset)


@dataclass
class CapacityDesign:
    """One capacity's design state: its observations, its running placements, the kimg it has spent."""

    capacity: Capacity
    observations: list[model.Observation] = field(default_factory=list)
    kimg: list[float] = field(default_factory=list)  # each ended trial's; summed exactly, in any order
    failed: int = 0  # trials that ended without a memorization value: they count against the trial budget
    stopped: str | None = None  # why it needs no more trials
    failed_arms: tuple[str, ...] = ()  # the arm of each failed trial (a plain default: older pickles lack it)

    def given_up(self) -> set[str]:
        """Arms that failed ARM_FAILURE_LIMIT trials and never ended one with a value: no longer placed."""
        succeeded = {o.arm for o in self.observations}
        return {arm for arm in set(self.failed_arms) - succeeded if self.failed_arms.count(arm) >= ARM_FAILURE_LIMIT}

    def state(self, design: Design, running: list[Placement]) -> State:
        """The design's view of the arms still placed (the reference always, which the searcher checks itself),
        observations in one canonical order: the same trials give the same fit, bit for bit, whichever order they
        ended in."""
        given_up = self.given_up() - {design.reference}
        arms = tuple(arm for arm in design.arms if arm not in given_up)
        ordered = sorted(self.observations, key=lambda o: (o.arm, o.images, o.memorization, o.censored))
        return State(replace(design, arms=arms), tuple(ordered), tuple(running))


class AdaptiveSearcher(Searcher):
    """Hands out the design's placements as suggestions; learns from every ended trial."""

    def __init__(self, config: StudyConfig, plan: DesignPlan):
        super().__init__(metric=None, mode=None)
        self.config, self.plan = config, plan
        self.capacities = [CapacityDesign(capacity) for capacity in capacity_values(config)]
        self.queue: list[tuple[int, Placement, int]] = []  # (capacity index, placement, round)
        self.live: dict[str, tuple[int, Placement]] = {}
        self.maxima = RunningMax()
        self.round = 0
        self.placed: dict[tuple, int] = {}  # (capacity index, arm, images) -> trials placed there, for their seeds

    @property
    def finished(self) -> bool:
        return all(c.stopped for c in self.capacities) and not self.live and not self.queue

    def suggest(self, trial_id: str):
        if not self.queue and not self._plan_round():
            return Searcher.FINISHED if self.finished else None
        index, placement, placed_round = self.queue.pop(0)
        self.live[trial_id] = (index, placement)
        return self._suggestion(index, placement, placed_round).to_tune()

    def _plan_round(self) -> bool:
        """Queue placements for the free slots, capacities taking turns; False when there is nothing to place now."""
        free = self.plan.slots - len(self.live)
        if free <= 0:
            return False
        order = [(self.round + k) % len(self.capacities) for k in range(len(self.capacities))]
        placed = [(index, placement) for index in order for placement in self._placements(index, free)]
        if not placed:
            return False
        self.round += 1
        self.queue = [(index, placement, self.round) for index, placement in placed[:free]]
        return True

    def _placements(self, index: int, slots: int) -> list[Placement]:
        """The capacity's next placements. Whether it stops is decided only while none of its trials runs, from all
        that ended: so the decision is a function of the ended trials alone, which is what lets the ledger replay
        it (design_finished). While trials run and the rule says stop, it waits for them instead of placing more."""
        capacity = self.capacities[index]
        if capacity.stopped:
            return []
        running = [p for i, p in self.live.values() if i == index]
        state = capacity.state(self.plan.design, running)
        if state.design.arms == (state.design.reference,) or self.plan.design.reference in capacity.given_up():
            capacity.stopped = None if running else "every arm but one failed every trial: no multiplier to measure"
            return []
        with threadpool_limits(1):  # a fit is a tiny problem: BLAS threads made it 9x slower (docs/adaptive_design.md)
            fit = model.fit(state.observations, slope=self.plan.design.slope) if state.observations else None
        budget = self.plan.rule.max_trials - len(state.observations) - capacity.failed - len(running)
        reason = stop_reason(state, fit, self.plan.rule, math.fsum(capacity.kimg)) or ("trials" if budget <= 0 else None)
        placements = [] if reason else next_round(state, min(slots, budget), fit)
        if not placements and not running:
            capacity.stopped = reason or "nothing left to place"
        return placements

    def _suggestion(self, index: int, placement: Placement, placed_round: int):
        key = (index, placement.arm, placement.images)
        seed = self.plan.seed_offset + self.placed.get(key, 0)
        self.placed[key] = self.placed.get(key, 0) + 1
        cell = sized_cell(self.config, placement.images, self.capacities[index].capacity)
        return cell.suggestion(role=placement.arm, overrides=dict(self.plan.arms[placement.arm]), seed=seed,
                               round=placed_round, placed_by=placement.reason)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.maxima.update(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        index, placement = self.live.pop(trial_id)
        if result is not None:
            self.on_trial_result(trial_id, result)
        maximum = self.maxima.pop(trial_id)
        if error or not result or "error_kind" in result or maximum is None:
            self.capacities[index].failed += 1  # it says nothing about memorization; the design places again
            self.capacities[index].failed_arms += (placement.arm,)
            return
        kimg = float(result.get("kimg", 0.0))
        capacity = self.capacities[index]
        capacity.kimg.append(kimg)
        capacity.observations.append(model.Observation(placement.arm, placement.images, maximum,
                                                       censored=kimg < self.plan.total_kimg - 1e-6,
                                                       samples=self.plan.design.samples))

    def get_state(self) -> dict:
        keep = ("capacities", "queue", "live", "maxima", "round", "placed")
        return {name: getattr(self, name) for name in keep}

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.get_state(), handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.set_state(pickle.load(handle))



def design_finished(config: StudyConfig, plan: DesignPlan, records: dict[str, dict]) -> bool:
    """Whether the design is over, from the phase's ledger alone: every trial ended, and a searcher told all of
    them would place nothing more (its stop is a function of the ended trials alone). A Tune run that returned
    otherwise was interrupted."""
    searcher = AdaptiveSearcher(config, plan)
    labels = [capacity_label(capacity) for capacity in capacity_values(config)]
    for trial_id, record in sorted(records.items(), key=lambda item: item[1]["started"]):
        if "status" not in record:
            return False
        suggestion = Suggestion.from_tune(record["suggestion"])
        searcher.live[trial_id] = (labels.index(suggestion.capacity), Placement(suggestion.role, suggestion.images, suggestion.placed_by))
        for point in record["history"]:
            searcher.on_trial_result(trial_id, point)
        last = {**record.get("last_result", {}), **record.get("failure", {})}
        searcher.on_trial_complete(trial_id, last, error=Status(record["status"]).failed)
    return not searcher._plan_round() and searcher.finished
