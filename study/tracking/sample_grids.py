"""Sample grids out of a trial's checkpoint, which Ray Train may delete later, into the study's samples folder."""

from __future__ import annotations

from pathlib import Path


def checkpoint_location(trial, result: dict):
    """(filesystem, path) of the checkpoint saved with this result, if any. A Ray Train worker group passes its
    path (a local path or a URI); a trial training in its own process reports to Tune, which names the
    checkpoint's folder inside the trial's storage."""
    import pyarrow.fs as pafs

    if result.get("checkpoint_path"):
        path = result["checkpoint_path"]
        return pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    if result.get("checkpoint_dir_name") and getattr(trial, "storage", None) is not None:
        return trial.storage.storage_filesystem, f"{trial.storage.trial_fs_path}/{result['checkpoint_dir_name']}"
    return None


def copy_grids(trial, result: dict, samples_dir: Path, step: int) -> list[tuple[Path, str]]:
    """Copy the eval point's sample grid and its samples-beside-nearest-training-image grid; returns
    (local file, artifact folder) for each grid found."""
    from trainables.checkpoint import NEAREST_GRID, SAMPLE_GRID

    location = checkpoint_location(trial, result)
    if location is None:
        return []
    fs, path = location
    copied = []
    for name, artifact_dir in ((SAMPLE_GRID, "samples"), (NEAREST_GRID, "nearest")):
        try:
            with fs.open_input_stream(f"{path}/{name}") as stream:
                data = stream.read()
        except (OSError, FileNotFoundError):
            continue
        local = samples_dir / trial.trial_id / artifact_dir / f"kimg-{step:09d}.png"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        copied.append((local, artifact_dir))
    return copied
