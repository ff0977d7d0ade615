"""Each trial phase of a study as what Tune is asked to run: its searcher, how many trials, its scheduler.

The order of the phases is data (`contract.PHASE_ORDER`); a builder per phase makes its spec from the
study's config and cells, so the runner is one loop over the order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ray.tune.search import Searcher

from study.config import StudyConfig
from study.contract import Phase
from study.phases.ablation import ablation_suggestions
from study.phases.cells import Cell
from study.phases.confirm import FixedSearcher, confirmation_suggestions
from study.phases.schedulers import early_stopping
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


def ablation_phase(config: StudyConfig, cells: list[Cell], optuna_url: str) -> PhaseSpec:
    suggestions = ablation_suggestions(config, cells)
    return PhaseSpec(Phase.ABLATION, FixedSearcher(suggestions), len(suggestions))


def search_phase(config: StudyConfig, cells: list[Cell], optuna_url: str) -> PhaseSpec:
    searcher = RegimeSearcher(cells, config.search, optuna_url, config.name, config.trial.resolved_model()["dropout"],
                              config.trial.train.total_kimg)
    return PhaseSpec(Phase.SEARCH, searcher, len(cells) * config.search.trials_per_regime, early_stopping(config),
                     after=searcher.close_orphans)


def confirm_phase(config: StudyConfig, cells: list[Cell], optuna_url: str) -> PhaseSpec:
    suggestions, notes = confirmation_suggestions(cells, optuna_url, config.name, config.confirm, config.search,
                                                  config.trial.resolved_model()["dropout"])
    return PhaseSpec(Phase.CONFIRM, FixedSearcher(suggestions), len(suggestions), notes=notes)


PHASE_BUILDERS = {Phase.ABLATION: ablation_phase, Phase.SEARCH: search_phase, Phase.CONFIRM: confirm_phase}
