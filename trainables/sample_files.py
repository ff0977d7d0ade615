"""Folders and .npz files of generated images, in the field's shapes, so EDM's and DiffMemorize's tools read ours
and ours read theirs.

- A folder: one PNG per seed, `000123.png` (EDM's generate.py names), optionally in subfolders of 1,000
  (`000000/`, `001000/`, ...). Written atomically, so an interrupted run leaves whole files only and a rerun
  skips the seeds already there.
- An `.npz`: `arr_0`, uint8 [N, H, W, C] (the layout of ADM's evaluation batches), and `seeds`. Batches written
  so far wait in `<name>.npz.parts/` until the last one, so an interrupted run resumes from them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from trainables.files import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SUBDIR_SIZE = 1000


class SampleFilesError(ValueError):
    """A folder or .npz of images that cannot be read as images of one shape."""


def png_path(outdir: Path, seed: int, subdirs: bool) -> Path:
    name = f"{seed:06d}.png"
    return Path(outdir) / f"{seed - seed % SUBDIR_SIZE:06d}" / name if subdirs else Path(outdir) / name


def _parts(outdir: Path) -> Path:
    return Path(f"{outdir}.parts")


def is_npz(path: str | Path) -> bool:
    return str(path).endswith(".npz")


def missing_seeds(outdir: Path, seeds: Sequence[int], subdirs: bool) -> list[int]:
    """The seeds not yet written: an interrupted generation continues where it stopped."""
    if is_npz(outdir):
        done = set()
        for part in sorted(_parts(outdir).glob("*.npz")) + ([Path(outdir)] if Path(outdir).is_file() else []):
            with np.load(part) as data:
                if "seeds" in data.files:
                    done.update(int(s) for s in data["seeds"])
        return [s for s in seeds if s not in done]
    return [s for s in seeds if not png_path(outdir, s, subdirs).is_file()]


def write_batch(outdir: Path, seeds: Sequence[int], images: torch.Tensor, subdirs: bool) -> None:
    """One batch of uint8 images [B, C, H, W], named by their seeds."""
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    if is_npz(outdir):
        with atomic_path(_parts(outdir) / f"{seeds[0]:09d}.npz", suffix=".npz") as temporary:
            np.savez(temporary, seeds=np.asarray(seeds, dtype=np.int64), arr_0=array)
        return
    from PIL import Image

    for seed, image in zip(seeds, array):
        with atomic_path(png_path(outdir, seed, subdirs), suffix=".png") as temporary:
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(temporary)


def finish(outdir: Path, seeds: Sequence[int]) -> None:
    """An .npz's parts gathered into one file, in the order of `seeds`; a folder needs nothing."""
    parts = sorted(_parts(outdir).glob("*.npz")) if is_npz(outdir) else []
    if not parts:
        return
    found: dict[int, np.ndarray] = {}
    for part in parts + ([Path(outdir)] if Path(outdir).is_file() else []):
        with np.load(part) as data:
            found.update(zip((int(s) for s in data["seeds"]), data["arr_0"]))
    with atomic_path(outdir, suffix=".npz") as temporary:
        np.savez(temporary, arr_0=np.stack([found[s] for s in seeds]), seeds=np.asarray(seeds, dtype=np.int64))
    for part in parts:
        part.unlink()
    _parts(outdir).rmdir()


def image_paths(folder: Path) -> list[Path]:
    """Every image under `folder`, subfolders included, sorted by path (seed order for our own folders)."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_images(path: str | Path, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """uint8 images [N, C, H, W] and their names (file paths relative to the folder, or `<npz>[i]`)."""
    path = Path(path)
    if is_npz(path) and path.is_file():
        with np.load(path) as data:
            key = "arr_0" if "arr_0" in data.files else data.files[0]
            array = data[key][:limit]
        if array.dtype != np.uint8 or array.ndim != 4:
            raise SampleFilesError(f"{path}: {key} must be uint8 [N, H, W, C], got {array.dtype} {array.shape}")
        return _channels_first(array), [f"{path.name}[{i}]" for i in range(len(array))]
    if not path.is_dir():
        raise SampleFilesError(f"{path} is neither a folder of images nor an .npz file")
    files = image_paths(path)[:limit]
    if not files:
        raise SampleFilesError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return _decoded(files), [str(f.relative_to(path)) for f in files]


def _decoded(files: list[Path]) -> torch.Tensor:
    from PIL import Image

    first, out = None, None
    for i, file in enumerate(files):
        with Image.open(file) as img:
            array = np.asarray(img.convert("L") if img.mode in ("1", "L", "I;16") else img.convert("RGB"))
        array = array[..., None] if array.ndim == 2 else array
        if out is None:
            first = (file, array.shape)
            out = np.empty((len(files), *array.shape), dtype=np.uint8)
        elif array.shape != first[1]:
            raise SampleFilesError(f"{file} is {array.shape}, {first[0]} is {first[1]}: the images must share one shape")
        out[i] = array
    return _channels_first(out)


def _channels_first(array: np.ndarray) -> torch.Tensor:
    """[N, H, W, C] -> [N, C, H, W] in plain contiguous strides, as the sampler makes them: torch's (and numpy's)
    contiguous copies keep odd strides on a size-1 channel axis, and a convolution then takes another path
    (features, and FID, then differ from the trial's in the 8th digit)."""
    permuted = torch.from_numpy(array).permute(0, 3, 1, 2)
    return torch.empty(permuted.shape, dtype=permuted.dtype).copy_(permuted)
