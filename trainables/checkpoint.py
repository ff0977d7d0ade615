"""Atomic checkpoint files, loaded with torch's safe (weights-only) unpickler."""

from __future__ import annotations

from pathlib import Path

import torch

from trainables.files import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"
SAMPLE_GRID = "samples.png"  # written beside each checkpoint, so the driver can log it from storage
NEAREST_GRID = "nearest.png"  # the first NEAREST_PAIRS grid samples, each beside its nearest training image
NEAREST_PAIRS = 16
NEAREST_PAIRS_PER_ROW = 4


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or not ours; the message names the file."""


def save_checkpoint(state: dict, directory: Path) -> Path:
    """Write `state` to directory/checkpoint.pt via a temp file and rename, so a crash never leaves half a file."""
    final = directory / CHECKPOINT_FILE
    with atomic_path(final) as temporary:
        torch.save(state, temporary)
    return final


def load_refusal(path: Path, err: Exception) -> str:
    """Why torch's weights-only loader refused `path`, in one line: a pickled Python object (a class, a function:
    loading it would run code) is named as such; anything else is unreadable."""
    text = str(err)
    detail = text.split("WeightsUnpickler error:", 1)[-1].strip()  # torch's reason, after its long preamble
    if detail.startswith("Unsupported global"):
        return f"{path} holds pickled Python objects, not tensors only; refused (loading it would run code)"
    return f"{path} is unreadable ({type(err).__name__}: {' '.join(detail.split())[:120]})"


def load_checkpoint(directory: Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CHECKPOINT_FILE} in {directory}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {load_refusal(path, err)}; delete it to restart from the previous one") from None
    missing = {"net", "ema", "optimizer", "nimg", "config"} - set(state)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}; it was not written by this trainer")
    return state
