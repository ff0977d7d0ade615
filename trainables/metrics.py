"""Evaluation metrics that need no feature network: fixed-grid denoising losses, memorization, sample grids and
samples beside their nearest training images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch

from trainables.loss import edm_weight


class DenoisingProbe:
    """EDM-weighted denoising loss on fixed images, at fixed noise levels with fixed noise.

    Built once per trial, so every eval point (and every trial, given the same eval seed) sees
    exactly the same (image, sigma, noise) triples: the loss differences come from the network alone.
    """

    def __init__(self, images: torch.Tensor, sigmas: list[float], sigma_data: float, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.images = images
        self.sigmas = torch.tensor(sigmas, dtype=torch.float32)
        self.noise = torch.randn((len(sigmas), *images.shape), generator=generator)
        self.sigma_data = sigma_data

    @torch.no_grad()
    def loss(self, net, batch_size: int = 512) -> float:
        """The mean weighted loss of the unconditional denoiser `net`."""
        device = self.images.device
        total = 0.0
        for sigma, noise in zip(self.sigmas, self.noise):
            sigma_vec = sigma.to(device).expand(self.images.shape[0])
            noisy = self.images + noise.to(device) * sigma
            for start in range(0, self.images.shape[0], batch_size):
                part = slice(start, start + batch_size)
                denoised = net(noisy[part], sigma_vec[part]).float()
                total += (edm_weight(sigma, self.sigma_data) * (denoised - self.images[part]) ** 2).mean((1, 2, 3)).sum().item()
        return total / (len(self.sigmas) * self.images.shape[0])


COPY_RATIO = 1.0 / 3.0  # a copy: nearest training image closer than this times the second nearest
NEAREST_CHUNK = 1024  # samples per distance block: 1,024 x 50,000 float32 distances are 200 MB


class Nearest(NamedTuple):
    values: torch.Tensor  # [N, k] pixel-L2 distances, nearest first
    indices: torch.Tensor  # [N, k] indices into the training images


def nearest_training_images(samples: torch.Tensor, training_images: torch.Tensor, k: int = 1, chunk: int = NEAREST_CHUNK) -> Nearest:
    """Pixel-L2 distances and indices of each sample's k nearest training images, nearest first, a block of
    samples at a time: 50,000 samples against 50,000 training images never hold a 50,000 x 50,000 matrix."""
    train = training_images.flatten(1).float().to(samples.device)
    found = [torch.cdist(part.float(), train).topk(k, dim=1, largest=False) for part in samples.flatten(1).split(chunk)]
    if not found:
        empty = torch.zeros((0, k), device=samples.device)
        return Nearest(empty, empty.long())
    return Nearest(torch.cat([f.values for f in found]), torch.cat([f.indices for f in found]))


class CopyTest(NamedTuple):
    """The study's copy criterion per sample (Gu et al.'s, as DiffMemorize's mem_ratio.py): a sample is a copy
    when its nearest training image is closer than `ratio` times the second nearest (pixel L2)."""

    ratios: torch.Tensor  # [N] nearest distance / second-nearest distance
    copied: torch.Tensor  # [N] bool
    nearest: torch.Tensor  # [N] index of the nearest training image


def copy_test(samples: torch.Tensor, training_images: torch.Tensor, ratio: float = COPY_RATIO) -> CopyTest:
    """Each sample's distance ratio and verdict; needs at least two training images."""
    found = nearest_training_images(samples, training_images, k=2)
    first, second = found.values[:, 0], found.values[:, 1]
    return CopyTest(first / second, first < ratio * second, found.indices[:, 0])


def memorization(samples: torch.Tensor, training_images: torch.Tensor, ratio: float = COPY_RATIO) -> float:
    """Fraction of samples whose nearest training image is closer than `ratio` times the second nearest (pixel L2)."""
    if training_images.shape[0] < 2:
        return float("nan")
    return float(copy_test(samples, training_images, ratio).copied.float().mean().item())


def beside_nearest(samples: torch.Tensor, training_images: torch.Tensor) -> torch.Tensor:
    """Each sample with its nearest training image to its right, uint8 [N, C, H, 2W]: copying shows at a glance."""
    index = nearest_training_images(samples, training_images).indices[:, 0]
    partners = training_images.to(samples.device)[index]
    return torch.cat([samples, partners], dim=-1)


def save_grid(images_uint8: torch.Tensor, path: Path, upscale: int | None = None, columns: int | None = None, border: int = 0) -> Path:
    """A PNG grid of uint8 images [N, C, H, W], square unless `columns` is given, lines between them of value `border`;
    small images are upscaled so they can be seen."""
    from PIL import Image

    images = images_uint8.cpu()
    n, c, h, w = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = torch.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), border, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = images[i]
    array = canvas.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if c == 1 else array)
    factor = upscale or max(1, 128 // max(h, w))
    picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path

