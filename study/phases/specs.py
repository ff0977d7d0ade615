"""Each trial phase of a study as what Tune is asked to run: its searcher, how many trials, its scheduler.

The order of the phases is data (`contract.PHASE_ORDER`); a builder per phase makes its spec from the
study's config and cells, so the runner is one loop over the order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from ray.tune.search import Searcher

from study.config import StudyConfig
from study.contract import Phase
from study.phases.ablation import ablation_suggestions
from study.phases.cells import Cell
from study.phases.confirm import FixedSearcher, confirmation_suggestions, picked_overrides
from study.phases.adaptive import AdaptiveSearcher, design_finished, design_plan
from study.phases.cells import capacity_values
from study.phases.schedulers import DecidedStopper, early_stopping
from study.phases.searcher import RegimeSearcher


@dataclass
class PhaseSpec:
    """What Tune needs to run one phase."""

    phase: Phase
    searcher: Searcher
    trials: int
    scheduler: object = None
    notes: list[str] = field(default_factory=list)
    after: Callable[[], object] | None = None  # once every trial ended
    complete: Callable[[dict], bool] | None = None  # whether the phase ended, from its ledger records

    def ended(self, records: dict[str, dict]) -> bool:
        """Every trial that really ended has a status in the ledger: all of them (or, for a design, all it needs)."""
        if self.complete:
            return self.complete(records)
        return sum("status" in r for r in records.values()) >= self.trials


def ablation_phase(config: StudyConfig, cells: list[Cell], optuna_url: str, concurrency: int) -> PhaseSpec:
    suggestions = ablation_suggestions(config, cells)
    return PhaseSpec(Phase.ABLATION, FixedSearcher(suggestions), len(suggestions))


def search_phase(config: StudyConfig, cells: list[Cell], optuna_url: str, concurrency: int) -> PhaseSpec:
    searcher = RegimeSearcher(cells, config.search, optuna_url, config.name, config.trial.resolved_model()["dropout"],
                              config.trial.train.total_kimg)
    return PhaseSpec(Phase.SEARCH, searcher, len(cells) * config.search.trials_per_regime, early_stopping(config),
                     after=searcher.close_orphans)


def confirm_phase(config: StudyConfig, cells: list[Cell], optuna_url: str, concurrency: int) -> PhaseSpec:
    suggestions, notes = confirmation_suggestions(cells, optuna_url, config.name, config.confirm, config.search,
                                                  config.trial.resolved_model()["dropout"])
    return PhaseSpec(Phase.CONFIRM, FixedSearcher(suggestions), len(suggestions), notes=notes)


def design_phase(config: StudyConfig, cells: list[Cell], optuna_url: str, concurrency: int) -> PhaseSpec:
    """The adaptive design; its arms gain the searched best config when a search ran first (the config picked
    at the smallest searched size, where copying is most at stake)."""
    notes, best = [], None
    if config.design.searched_arm:
        best, note = picked_overrides(cells[0], optuna_url, config.name, config.search, config.confirm.pick_by)
        notes += [f"{cells[0].name}: {note}"] if note else []
    plan = design_plan(config, concurrency, best)
    trials = config.design.max_trials * len(capacity_values(config))
    return PhaseSpec(Phase.DESIGN, AdaptiveSearcher(config, plan), trials, DecidedStopper(config.design.saturation),
                     notes, complete=partial(design_finished, config, plan))


PHASE_BUILDERS = {Phase.ABLATION: ablation_phase, Phase.SEARCH: search_phase, Phase.CONFIRM: confirm_phase,
                  Phase.DESIGN: design_phase}
