"""Define-by-run Optuna search spaces. Each takes an `optuna.Trial` and returns config overrides by dotted path.

They are module-level functions so they pickle to any Ray process. Parameter names are the
dotted config paths they set, so Optuna's records, MLflow params and Parquet columns agree.
"""

from __future__ import annotations

from search_spaces.transform_sets import TRANSFORM_SETS


def _transform_set(trial, prefix: str) -> list[str]:
    """A named set, or per-transform on/off switches with each strength searched only when it is on."""
    name = trial.suggest_categorical(f"{prefix}.transform_set", [*TRANSFORM_SETS, "custom"])
    if name != "custom":
        return list(TRANSFORM_SETS[name])
    chosen = [t for t in TRANSFORM_SETS["all"] if trial.suggest_categorical(f"{prefix}.use_{t}", [True, False])]
    return chosen or ["hflip"]


def _strengths(trial, prefix: str, transforms: list[str]) -> dict:
    out = {}
    if "translate" in transforms:
        out[f"{prefix}.translate_max"] = trial.suggest_float(f"{prefix}.translate_max", 0.0625, 0.25)
    if "brightness" in transforms:
        out[f"{prefix}.brightness_max"] = trial.suggest_float(f"{prefix}.brightness_max", 1.1, 2.0)
    if "cutout" in transforms:
        out[f"{prefix}.cutout_max"] = trial.suggest_float(f"{prefix}.cutout_max", 0.25, 0.5)
    return out


def scoreaug(trial) -> dict:
    """ScoreAug probability and transform set, dropout, and optional clean-data augmentation on top."""
    overrides = {"score_augment.p": trial.suggest_float("score_augment.p", 0.0, 1.0)}
    overrides["model.dropout"] = trial.suggest_float("model.dropout", 0.0, 0.3)
    if overrides["score_augment.p"] > 0:
        transforms = _transform_set(trial, "score_augment")
        overrides["score_augment.transforms"] = transforms
        overrides.update(_strengths(trial, "score_augment", transforms))
    if trial.suggest_categorical("clean_augment.enabled", [False, True]):
        overrides["clean_augment.p"] = trial.suggest_float("clean_augment.p", 0.05, 0.5)
        overrides["clean_augment.transforms"] = list(TRANSFORM_SETS["geometric"])
    return overrides


def scoreaug_with_capacity(trial) -> dict:
    """`scoreaug` plus the network width: does a smaller model overfit less?"""
    overrides = scoreaug(trial)
    overrides["model.model_channels"] = trial.suggest_categorical("model.model_channels", [16, 32, 64])
    return overrides


SPACES = {"scoreaug": scoreaug, "scoreaug_with_capacity": scoreaug_with_capacity}


def get_space(name: str):
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; choose one of {', '.join(SPACES)}")
    return SPACES[name]
