"""Which trained models a study keeps, and what they copy.

Per arm (and capacity) of an adaptive design, the models at the smallest size, near the arm's N50 and at the
largest size; per cell and arm of a searched study, its confirmed model (the lowest seed). Each is registered in
MLflow under `<study>-<arm>[-<cell or capacity>]` with that alias (driver/runner.py). The report draws, per arm,
the first samples of the smallest and near-N50 models beside their nearest training images, each labelled copy
or not with its ratio: the samples are drawn at the trial's own eval seeds by its sampler from its final EMA
weights, the training images are its own regime, and the criterion is the trainer's copy_test.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from study.contract import Phase, Role, Status
from study.phases.suggestion import Suggestion
from study.tracking.models import ModelChoice

KEPT = (Status.COMPLETED, Status.EARLY_STOPPED)
PAIRS = 16  # samples per model in the figure (the trial's own nearest.png shows as many)
DRAWN = ("smallest", "near-n50")


@dataclass(frozen=True)
class KeptModel:
    trial_id: str
    run_id: str | None
    arm: str
    group: str  # the capacity (a design) or the cell (a searched study); "" when there is one
    images: int
    alias: str


def registered_name(study: str, arm: str, group: str) -> str:
    """A registry name MLflow accepts: letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(part for part in (study, arm, group) if part)).strip("-")


def _kept(records: list[dict], phase: Phase) -> dict[tuple[str, str], list[tuple[dict, Suggestion]]]:
    groups: dict[tuple[str, str], list] = {}
    for record in records:
        if record["phase"] == phase and record.get("status") in KEPT:
            suggestion = Suggestion.from_tune(record["suggestion"])
            group = suggestion.capacity if phase == Phase.DESIGN else suggestion.cell
            groups.setdefault((suggestion.role, group), []).append((record, suggestion))
    return groups


def design_models(records: list[dict], summary: dict[str, dict]) -> list[KeptModel]:
    """Per capacity and arm: the models at the smallest size, nearest the arm's N50 (log scale) and the largest."""
    kept = []
    for (arm, capacity), trials in _kept(records, Phase.DESIGN).items():
        per_arm = {e["arm"]: e for e in ((summary.get(capacity) or {}).get("final") or {}).get("per_arm", [])}
        n50 = per_arm.get(arm, {}).get("n50")
        by_size = sorted(trials, key=lambda t: (t[1].images, t[0]["started"]))
        picks = {"smallest": by_size[0], "largest": by_size[-1]}
        if n50:
            picks["near-n50"] = min(by_size, key=lambda t: abs(math.log(t[1].images / n50)))
        kept += [KeptModel(r["trial_id"], r.get("run_id"), arm, capacity, s.images, alias) for alias, (r, s) in picks.items()]
    return kept


def confirmed_models(records: list[dict]) -> list[KeptModel]:
    """Per cell and arm of the confirmation phase: the model of its lowest seed."""
    kept = []
    for (arm, cell), trials in _kept(records, Phase.CONFIRM).items():
        record, suggestion = min(trials, key=lambda t: t[1].seed)
        kept.append(KeptModel(record["trial_id"], record.get("run_id"), arm, cell, suggestion.images or 0, "confirmed"))
    return kept


def model_choices(study: str, kept: list[KeptModel], models_dir: Path) -> list[ModelChoice]:
    """What to register: the kept models whose run and logged model exist."""
    return [ModelChoice(registered_name(study, k.arm, k.group), k.alias, k.run_id, f"{k.arm}, {k.images} training images, trial {k.trial_id}")
            for k in kept if k.run_id and (models_dir / k.trial_id).is_dir()]


def copies_figures(kept: list[KeptModel], models_dir: Path, folder: Path) -> list[Path]:
    """One figure per capacity: per arm, the smallest and near-N50 models' samples beside their nearest training images."""
    from study.report.figures.copies import copies_figure
    from trainables.metrics import COPY_RATIO

    figures = []
    for group in sorted({k.group for k in kept}):
        drawn = [k for k in kept if k.group == group and k.alias in DRAWN and (models_dir / k.trial_id).is_dir()]
        drawn.sort(key=lambda k: (k.arm != Role.BASELINE, k.arm, DRAWN.index(k.alias)))
        if drawn:
            name = "copies.png" if not group else f"copies_{registered_name('', '', group)}.png"
            figures.append(copies_figure([_panel(k, models_dir) for k in drawn], folder / name, COPY_RATIO))
    return figures



def _panel(kept: KeptModel, models_dir: Path):
    """The model's first PAIRS eval samples beside their nearest images of its own regime."""
    from study.report.figures.copies import CopyPanel
    from trainables.data import load_dataset
    from trainables.generation import sample_batches, torch_threads, trial_seeds
    from trainables.loop import trial_regime
    from trainables.metrics import COPY_RATIO, copy_test
    from trainables.model_file import load_model

    model = load_model(models_dir / kept.trial_id)
    config = model.config
    dataset = load_dataset(config.dataset, config.data_path, config.resolution, config.skip_unreadable)
    regime_images = dataset.train[trial_regime(config, dataset)]
    seeds = trial_seeds(config.eval.seed, PAIRS)
    with torch_threads(config.runtime.threads):
        samples = next(sample_batches(model.net, seeds, model.shape, config.eval.sampler_steps, config.diffusion))[1]
    found = copy_test(samples, regime_images, COPY_RATIO)
    title = f"{kept.arm} at N = {kept.images} ({kept.alias.replace('-', ' ')}): {int(found.copied.sum())} of {PAIRS} copy"
    return CopyPanel(title, samples, regime_images[found.nearest], found.ratios.tolist(), found.copied.tolist())


def copies_markdown(figures: list[Path], study: str) -> str:
    """The report's section on copies: the figures, and how to audit any model the same way."""
    if not figures:
        return ""
    lines = ["## What the models copy", "",
             "Per arm, the first samples of the model at the smallest size and of the one nearest the arm's N50, each beside "
             "its nearest training image of the trial's own subset (pixel L2), titled copy or novel with the ratio of "
             "nearest to second-nearest distance (a copy: under 1/3). The models are registered in MLflow as "
             f"`{study}-<arm>` with aliases `smallest`, `near-n50` and `largest`; `python -m study.after memorization` "
             "audits any folder of samples the same way.", ""]
    return "\n".join(lines + [f"![samples beside their nearest training images]({f.name})\n" for f in figures]) + "\n"
