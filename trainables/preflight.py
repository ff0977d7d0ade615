"""Everything about a trial config that can fail, checked before any trial starts.

Pydantic checks each value; this checks what only the parts together decide: that the network builds at the
dataset's resolution, that the feature space exists and fits the images, that the data is on disk and that
the device is there. A study runs it on the driver before Ray starts (and `--dry-run` runs the same), so a
config that passes can no longer fail at trial start-up, retried as if it were a fault.
"""

from __future__ import annotations

import torch

from trainables.catalog import DATASETS
from trainables.config import TrialConfig
from trainables.config_io import ConfigError
from trainables.data import FIXED_SHAPES, DatasetError, DatasetShape, dataset_shape


def check_trial(config: TrialConfig, shape: DatasetShape | None = None, on_this_machine: bool = True) -> DatasetShape | None:
    """Raise ConfigError or DatasetError for the first problem; returns the dataset's shape for reuse.

    `shape`: the dataset's, when already checked (a study checks the data once for all its trial configs).
    `on_this_machine`: the trials run here, so the data and `runtime.device` must be here. On a cluster they
    are the workers' (a trial that lacks them fails at once, unretried): only what needs no files is checked."""
    problems, shape = trial_problems(config, shape, on_this_machine)
    if problems:
        raise problems[0]
    return shape


def trial_problems(config: TrialConfig, shape: DatasetShape | None = None,
                   on_this_machine: bool = True) -> tuple[list[Exception], DatasetShape | None]:
    """Every problem check_trial would raise, not only the first (a dry run lists them all), and the shape."""
    problems: list[Exception] = []
    if shape is None and on_this_machine:
        try:
            shape = dataset_shape(config.dataset, config.data_path, config.resolution, config.skip_unreadable)
        except DatasetError as err:
            problems.append(err)
    checked = shape or _shape_without_files(config)
    if checked is not None:
        for check in (_check_network, _check_feature_space) if config.eval.fid else (_check_network,):
            try:
                check(config, checked)
            except ConfigError as err:
                problems.append(err)
    if on_this_machine and config.runtime.device == "cuda" and not torch.cuda.is_available():
        problems.append(ConfigError("runtime.device: cuda, but this machine has no usable CUDA device; use auto or cpu"))
    return problems, shape if on_this_machine else checked


def _shape_without_files(config: TrialConfig) -> DatasetShape | None:
    if config.dataset in FIXED_SHAPES:
        return FIXED_SHAPES[config.dataset]
    resolution = config.resolution or DATASETS[config.dataset].default_resolution
    return DatasetShape(3, resolution) if resolution else None


def _check_network(config: TrialConfig, shape: DatasetShape) -> None:
    """Build the network on the meta device: every shape check runs, no memory is allocated."""
    from trainables.loss import build_trial_denoiser

    arch = config.resolved_model()
    try:
        with torch.device("meta"):
            build_trial_denoiser(config, shape.resolution, shape.channels)
    except (ValueError, AssertionError, RuntimeError, ZeroDivisionError, IndexError) as err:
        given = ", ".join(f"{k}={arch[k]}" for k in ("model_channels", "channel_mult", "num_blocks", "attn_resolutions"))
        raise ConfigError(f"model: no U-Net of {given} at {shape.resolution}x{shape.resolution} "
                          f"({str(err).splitlines()[0] or type(err).__name__})") from None


def _check_feature_space(config: TrialConfig, shape: DatasetShape) -> None:
    from trainables.feature_nets import NET_SPECS
    from trainables.fid import FEATURE_SPACES, FeatureWeightsError, default_feature_space, find_inception_weights

    ev = config.eval
    name = ev.fid_features or default_feature_space(config.dataset)
    if name not in FEATURE_SPACES:
        raise ConfigError(f"eval.fid_features: unknown feature space {name!r}; choose one of {', '.join(FEATURE_SPACES)}")
    if name != "inception-v3":
        if ev.fid_weights is not None:
            raise ConfigError(f"eval.fid_weights: {name} uses its shipped weights; fid_weights applies to inception-v3 only")
        needs = FIXED_SHAPES[NET_SPECS[name].dataset]
        if (shape.channels, shape.resolution) != (needs.channels, needs.resolution):
            raise ConfigError(f"eval.fid_features: {name} takes {needs.channels}x{needs.resolution}x{needs.resolution} "
                              f"images, the dataset is {shape.channels}x{shape.resolution}x{shape.resolution}; use inception-v3")
        return
    try:
        find_inception_weights(ev.fid_weights)
    except FeatureWeightsError as err:
        raise ConfigError(f"eval.fid_weights: {err}") from None
