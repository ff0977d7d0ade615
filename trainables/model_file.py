"""The model a trial leaves: its weights as tensors only, its resolved config, and the loader that builds the
network from them. Never a pickled module: every file is read by `torch.load(weights_only=True)`, which refuses
any pickled Python object, and the network is built by the project's own code from the config.

Two sources load alike: a model folder (`model.pt`, the EMA state dict, beside `model.json`: format, config,
image shape, kimg), as a finished trial logs to MLflow, and a trial's own checkpoint (`checkpoint.pt`: EMA and
raw weights), found in a trial's folder (`python -m trainables.train`'s, or a Tune trial's).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint, load_refusal
from trainables.config import TrialConfig
from trainables.config_io import ConfigError, validate
from trainables.files import atomic_path, write_text_atomic
from trainables.loss import build_trial_denoiser

MODEL_WEIGHTS = "model.pt"
MODEL_INFO = "model.json"
MODEL_FORMAT = "scoreaug-model/1"
WEIGHTS = ("ema", "raw")


class ModelFileError(RuntimeError):
    """A model or checkpoint that cannot be loaded (missing, corrupt, foreign, or holding pickled code)."""


@dataclass
class TrialModel:
    """A trained denoiser, ready to sample, with the config it was trained under."""

    net: torch.nn.Module
    config: TrialConfig
    kimg: float
    weights: str  # "ema" or "raw"
    source: Path
    shape: tuple[int, int, int]  # (channels, resolution, resolution)


def _image_shape(state: dict, where: Path) -> tuple[int, int, int]:
    """(channels, resolution, resolution) from the first encoder convolution, `model.enc.<R>x<R>_conv.weight`."""
    for key, tensor in state.items():
        found = re.fullmatch(r"model\.enc\.(\d+)x\1_conv\.weight", key)
        if found and tensor.ndim == 4:
            size = int(found.group(1))
            return int(tensor.shape[1]), size, size
    raise ModelFileError(f"{where} is not a scoreaug-study denoiser (no model.enc.<R>x<R>_conv.weight)")


def _tensors_only(state, where: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{where} does not hold a state dict of tensors; it was not written by this project")
    return dict(state)


def export_model(checkpoint_dir: Path, directory: Path) -> list[Path]:
    """`model.pt` (the checkpoint's EMA weights) and `model.json` in `directory`; returns both paths."""
    state = _read_checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE)
    ema = {k: v.detach().cpu().contiguous() for k, v in _tensors_only(state["ema"], checkpoint_dir).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / MODEL_WEIGHTS) as temporary:
        torch.save(ema, temporary)
    info = {"format": MODEL_FORMAT, "weights": "ema", "kimg": int(state["nimg"]) / 1000.0,
            "shape": list(_image_shape(ema, checkpoint_dir)), "config": json.loads(state["config"])}
    write_text_atomic(directory / MODEL_INFO, json.dumps(info, indent=1))
    return [directory / MODEL_WEIGHTS, directory / MODEL_INFO]


def _read_checkpoint(path: Path) -> dict:
    try:
        return load_checkpoint(path.parent)
    except CheckpointError as err:
        raise ModelFileError(str(err).splitlines()[0].removesuffix("; delete it to restart from the previous one")) from None


def _weights_file(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated, foreign or pickled files
        raise ModelFileError(load_refusal(path, err).splitlines()[0]) from None
    return _tensors_only(state, path)


def _config(data, where: Path) -> TrialConfig:
    try:
        return validate(TrialConfig, json.loads(data) if isinstance(data, str) else data)
    except (ConfigError, ValueError) as err:
        raise ModelFileError(f"{where}: its trial config is not this project's ({str(err).splitlines()[0][:160]})") from None


def locate(path: str | Path) -> Path:
    """The file to load: a model.pt or checkpoint.pt, in `path` or (a trial folder) its newest checkpoint."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelFileError(f"{path} does not exist; give a trial folder, a checkpoint folder or a model folder")
    for name in (MODEL_WEIGHTS, CHECKPOINT_FILE):
        if (path / name).is_file():
            return path / name
    found = sorted(path.rglob(CHECKPOINT_FILE))
    if not found:
        raise ModelFileError(f"{path} holds no {MODEL_WEIGHTS} and no {CHECKPOINT_FILE}; give a trial's folder")
    if len({f.parent.parent for f in found}) > 1:
        raise ModelFileError(f"{path} holds the checkpoints of {len({f.parent.parent for f in found})} trials; give one trial's folder")
    return found[-1]  # checkpoint folders are named in order (kimg-000000256, checkpoint_<date>)


def load_model(path: str | Path, weights: str = "ema", device: torch.device | str = "cpu") -> TrialModel:
    """The trained denoiser at `path` (see `locate`), in eval mode on `device`; `weights` "raw" needs a checkpoint."""
    if weights not in WEIGHTS:
        raise ModelFileError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
    file = locate(path)
    if file.name == CHECKPOINT_FILE:
        saved = _read_checkpoint(file)
        state, config, kimg = _tensors_only(saved["ema" if weights == "ema" else "net"], file), _config(saved["config"], file), int(saved["nimg"]) / 1000.0
    elif file.name == MODEL_WEIGHTS:
        info = _model_info(file.with_name(MODEL_INFO))
        if weights != info.get("weights", "ema"):
            raise ModelFileError(f"{file} holds {info.get('weights', 'ema')} weights only; a trial's checkpoint has both")
        state, config, kimg = _weights_file(file), _config(info.get("config"), file), float(info.get("kimg", 0.0))
    else:
        raise ModelFileError(f"{file} is neither {MODEL_WEIGHTS} nor {CHECKPOINT_FILE}")
    shape = _image_shape(state, file)
    return TrialModel(_built(config, state, shape, file).to(device), config, kimg, weights, file, shape)


def _model_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{path} is missing or not JSON ({type(err).__name__}); it must sit beside {MODEL_WEIGHTS}") from None
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path} is not a {MODEL_FORMAT} model description")
    return info


def _built(config: TrialConfig, state: dict, shape: tuple[int, int, int], where: Path) -> torch.nn.Module:
    """The project's network for `config`, holding exactly `state` (a key or shape that differs is refused)."""
    try:
        net = build_trial_denoiser(config, shape[1], shape[0])
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, ConfigError) as err:
        raise ModelFileError(f"{where}: its weights do not fit the network of its config ({str(err).splitlines()[0][:160]})") from None
    return net.eval().requires_grad_(False)
