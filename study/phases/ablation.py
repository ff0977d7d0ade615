"""Ablations: fixed arms (no search), each run in every regime with several training seeds (their report: ablation_report).

An ablation asks "what does this one choice do?" (say, rotation with or without the transform label),
so every arm gets the same budget and the same seeds, and the report gives each metric's mean and
spread over seeds per arm. Trials go through the same trainable, tracking and resume logic as a search.
"""

from __future__ import annotations

from study.phases.cells import Cell
from study.phases.suggestion import Suggestion
from study.config import StudyConfig


def ablation_suggestions(config: StudyConfig, cells: list[Cell]) -> list[Suggestion]:
    """One suggestion per (cell, arm, seed), seeds outermost so a cut-short run still covers every arm."""
    ablation = config.ablation
    return [cell.suggestion(role=arm, overrides=dict(overrides), seed=ablation.seed_offset + k)
            for k in range(ablation.seeds)
            for cell in cells
            for arm, overrides in ablation.arms.items()]
