"""The trial config: one typed, validated object that flows from the CLI (or a Tune trial) to the worker loop.

Every default lives here. Unknown keys and bad values fail at validation time with the key path
in the message, before any data is loaded or any process is started.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from trainables.catalog import DATASET_NAMES, DATASETS
from trainables.config_io import ConfigError, apply_overrides, load_yaml, validate

TransformName = Literal["hflip", "vflip", "rot90", "translate", "brightness", "cutout"]
ALL_TRANSFORMS: tuple[str, ...] = get_args(TransformName)  # their order numbers the transforms in the labels
DatasetName = Literal[DATASET_NAMES]

# Covers sigma 0.02..10 with most points in 0.1..2, where the train/test gap is largest (docs/method.md).
DEFAULT_LOSS_SIGMAS = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.65, 0.9, 1.3, 2.0, 4.0, 10.0]


class StrictModel(BaseModel):
    # No inf or NaN anywhere: `total_kimg: 1e400` is YAML for infinity, and no key means anything at infinity.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(StrictModel):
    """Network architecture: a named preset, each field overridable."""

    preset: str | None = None  # None: the dataset's default preset
    model_channels: int | None = Field(None, ge=4)
    channel_mult: list[int] | None = None
    num_blocks: int | None = Field(None, ge=1)
    attn_resolutions: list[int] | None = None
    dropout: float | None = Field(None, ge=0.0, lt=1.0)


class AugmentConfig(StrictModel):
    """A per-sample transform policy: with probability p, one transform drawn uniformly from `transforms`."""

    p: float = Field(0.0, ge=0.0, le=1.0)
    transforms: list[TransformName] = Field(default_factory=lambda: ["hflip", "rot90", "translate"])
    use_label: bool = True  # off: the network is not told the transform (reproduces label-free leakage)
    translate_max: float = Field(0.125, gt=0.0, le=0.5)  # integer shift up to this fraction of the image side
    brightness_max: float = Field(1.5, ge=1.0, le=4.0)  # scale s log-uniform in [1/max, max]
    cutout_min: float = Field(0.25, gt=0.0, le=1.0)  # cut side as a fraction of the image side
    cutout_max: float = Field(0.5, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> "AugmentConfig":
        if self.p > 0 and not self.transforms:
            raise ValueError("transforms must not be empty when p > 0")
        if self.cutout_min > self.cutout_max:
            raise ValueError("cutout_min must not exceed cutout_max")
        return self


class ScoreAugConfig(AugmentConfig):
    """ScoreAug: transform the noisy input and the clean target alike."""

    mode: Literal["noisy", "clean"] = "noisy"  # noisy: T(y+n) -> T(y) (the paper); clean: T(y)+n -> T(y) (NLA)
    preconditioning_sigma: Literal["original", "scaled"] = "original"  # sigma seen by the net after brightness scaling

    @model_validator(mode="after")
    def _check_sigma(self) -> "ScoreAugConfig":
        if self.mode == "clean" and self.preconditioning_sigma == "scaled":  # clean mode adds noise after the transform
            raise ValueError("preconditioning_sigma: scaled applies to mode: noisy only (mode clean scales no noise)")
        return self


class DiffusionConfig(StrictModel):
    sigma_data: float = Field(0.5, gt=0)
    P_mean: float = -1.2
    P_std: float = Field(1.2, gt=0)
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(80.0, gt=0)
    rho: float = Field(7.0, gt=0)


class TrainConfig(StrictModel):
    batch_size: int = Field(128, ge=1)  # global, split across workers
    lr: float = Field(1e-3, gt=0, le=1.0)
    lr_rampup_kimg: float = Field(2.0, ge=0)
    ema_halflife_kimg: float = Field(500.0, gt=0)  # EDM's default; early on the ramp-up below sets the half-life
    ema_rampup_ratio: float | None = Field(0.05, gt=0)  # EDM: half-life at most this fraction of images seen; None: off
    total_kimg: float = Field(20.0, gt=0)
    checkpoints_kept: int = Field(2, ge=1)


class EvalConfig(StrictModel):
    every_kimg: float = Field(5.0, gt=0)
    schedule: Literal["every", "log"] = "every"  # every: each every_kimg; log: every_kimg x 1, 2, 4, ... (onset curves)
    at_kimg: list[PositiveFloat] | None = None  # explicit eval points; wins over schedule
    loss_images: int = Field(256, ge=2)
    loss_sigmas: list[float] = Field(default_factory=lambda: list(DEFAULT_LOSS_SIGMAS), min_length=1)
    num_samples: int = Field(500, ge=2)  # generated images for fid, memorization, leakage
    sampler_steps: int = Field(18, ge=2)
    fid: bool = True
    fid_at: Literal["every", "final"] = "final"
    fid_features: str | None = None  # None: the dataset's default feature space
    fid_weights: str | None = None  # explicit path to the feature network's weights
    grid_images: int = Field(64, ge=1)
    seed: int = 0  # fixed noise and sampler seeds: the same across trials, so metrics are comparable

    def points_kimg(self, total_kimg: float) -> list[float]:
        """Where the trial evaluates and checkpoints, ascending, always ending at `total_kimg` (the final eval)."""
        if self.at_kimg is not None:
            candidates = self.at_kimg
        elif self.schedule == "log":
            candidates = [self.every_kimg * 2**k for k in range(math.ceil(math.log2(total_kimg / self.every_kimg)) + 1)]
        else:
            candidates = [self.every_kimg * k for k in range(1, math.ceil(total_kimg / self.every_kimg) + 1)]
        inside = {point for point in candidates if point < total_kimg and not math.isclose(point, total_kimg)}
        return sorted(inside) + [total_kimg]


class RuntimeConfig(StrictModel):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Training steps' autocast. auto: bf16 where the device has native bf16 units (CUDA; a CPU with AMX or
    # AVX-512 BF16), else fp32. Evaluation (sampling, loss probes) always runs in fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False  # torch.compile the network for training steps (a minute or more of compiling first)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads per worker; None: leave torch's default
    cache_dir: str | None = None  # FID reference statistics; None: ~/.cache/scoreaug/fid

    @model_validator(mode="before")
    @classmethod
    def _old_bf16_key(cls, data: Any) -> Any:
        """`bf16: true|false`, the old key, still reads as `precision: bf16|fp32`."""
        if isinstance(data, dict) and "bf16" in data:
            data = dict(data)
            bf16 = data.pop("bf16")
            if "precision" in data:
                raise ValueError("bf16 is the old name of precision: give precision only")
            if not isinstance(bf16, bool):
                raise ValueError(f"bf16 must be true or false (got {bf16!r}); it is the old name of precision")
            data["precision"] = "bf16" if bf16 else "fp32"
        return data


class TrialConfig(StrictModel):
    """Everything one trial needs; the resolved copy is saved with every checkpoint."""

    dataset: DatasetName = "digits"
    data_path: str | None = None
    skip_unreadable: bool = False  # image_folder: skip files that do not decode (one warning with the count); off: refuse
    resolution: int | None = Field(None, ge=8)
    regime_fraction: float = Field(1.0, gt=0.0, le=1.0)  # fraction of the training pool
    regime_images: int | None = Field(None, ge=2)  # images in the regime; wins over regime_fraction
    class_balanced: bool = True  # labelled datasets: every regime holds each class equally often (within one image)
    subset_seed: int = 0  # nested regime subsets are drawn with this seed
    seed: int = 0  # training seed: network init, batches, noise, augmentation draws
    model: ModelConfig = Field(default_factory=ModelConfig)
    score_augment: ScoreAugConfig = Field(default_factory=ScoreAugConfig)
    clean_augment: AugmentConfig = Field(default_factory=AugmentConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    def resolved_model(self) -> dict[str, Any]:
        """Preset merged with explicit overrides; an unknown preset names the known ones."""
        from trainables.networks import MODEL_PRESETS

        name = self.model.preset or DATASETS[self.dataset].default_preset
        if name not in MODEL_PRESETS:
            raise ConfigError(f"model.preset: unknown preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}")
        resolved = dict(MODEL_PRESETS[name])
        resolved.update({k: v for k, v in self.model.model_dump(exclude={"preset"}).items() if v is not None})
        return resolved


def load_trial_config(path: str | None = None, overrides: list[str] = ()) -> TrialConfig:
    data = load_yaml(path) if path else {}
    config = validate(TrialConfig, apply_overrides(data, list(overrides)))
    config.resolved_model()
    return config
