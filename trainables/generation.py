"""Which seeds a model samples and how: the one path from seeds to uint8 images, used by the trial's eval points
and by `python -m study.after generate`, so a seed gives the same image in both.

Seeds are written as EDM's generate.py takes them ("0-49999", "0-9,60"); each seed's latent is drawn on its own
(trainables.sampler.seeded_latents), so a seed's image does not depend on the other seeds beside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from trainables.config import DiffusionConfig
from trainables.data import to_uint8
from trainables.sampler import heun_sample, seeded_latents

SAMPLE_BATCH = 256  # the trial's own sampling batch: the same batch gives the same floating-point work
TRIAL_SEED_STRIDE = 1_000_000  # eval.seed k samples the seeds k * 1,000,000 + 0, 1, 2, ...


class SeedError(ValueError):
    """A seed list that does not parse; the message quotes the bad part."""


def parse_seeds(text: str) -> list[int]:
    """"0-49999,60" -> [0, ..., 49999, 60]: comma-separated seeds and inclusive ranges, in the order written."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            first, last = (int(low), int(high)) if dash else (int(part), int(part))
        except ValueError:
            raise SeedError(f"seeds: {part!r} is neither a seed nor a range like 0-49999") from None
        if first < 0 or last < first:
            raise SeedError(f"seeds: {part!r} is not a range of non-negative seeds, low to high")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise SeedError(f"seeds: {text!r} names a seed twice")
    return seeds


def trial_seeds(eval_seed: int, count: int) -> range:
    """The seeds of a trial's first `count` eval samples (all its metrics read the first eval.num_samples)."""
    return range(eval_seed * TRIAL_SEED_STRIDE, eval_seed * TRIAL_SEED_STRIDE + count)


def sample_batches(net, seeds: Sequence[int], shape: tuple[int, ...], num_steps: int, diffusion: DiffusionConfig,
                   device: torch.device | str = "cpu", batch: int = SAMPLE_BATCH) -> Iterator[tuple[Sequence[int], torch.Tensor]]:
    """(seeds, uint8 images [B, C, H, W]) per batch of `batch` seeds, in order: EDM's Heun sampler on the
    unconditional denoiser `net`."""
    for start in range(0, len(seeds), batch):
        part = seeds[start : start + batch]
        latents = seeded_latents(part, shape, device)
        yield part, to_uint8(heun_sample(net, latents, num_steps, diffusion))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `threads` (a trial's runtime.threads) for the block, then restored: on a
    shared, oversubscribed 2-core machine two spinning threads sampled 18 img/s where one sampled 116 (measured once)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
