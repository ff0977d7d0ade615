"""Leakage: how many generated samples come out rotated or flipped, judged by a shipped orientation classifier.

An augmentation that leaks (the network not told which transform it saw) shows up here, not in FID.
"""

from __future__ import annotations

import functools

import torch

from trainables.feature_nets import ORIENTATION_NETS, judged_transformed, load_shipped_net


@functools.lru_cache(maxsize=4)
def _orientation_net(dataset_name: str, device: str) -> torch.nn.Module:
    if dataset_name not in ORIENTATION_NETS:
        raise ValueError(f"leakage is measured for {', '.join(ORIENTATION_NETS)} only, not {dataset_name!r}")
    return load_shipped_net(ORIENTATION_NETS[dataset_name], device)[0]


def leakage(samples: torch.Tensor, dataset_name: str, device: str | torch.device = "cpu") -> float:
    """Fraction of generated uint8 samples that the dataset's shipped orientation net judges
    rotated or flipped (more likely one of the 7 non-identity elements of D4 than upright).

    Digits that look upright after a transform (a 0 rotated by 180 degrees) count as upright; see
    `trainables.feature_nets.orientation_targets`. The rates on upright and on transformed real
    test images are in `trainables/weights/manifest.json` (digits: 0.06 and 0.97; mnist5k: 0.02
    and 0.97). The net has seen only digits: noise and blank images read as transformed, so
    leakage means something only for samples that look like digits (FID near its floor).
    """
    net = _orientation_net(dataset_name, str(torch.device(device)))
    size = net.resolution
    if samples.dtype != torch.uint8 or tuple(samples.shape[1:]) != (1, size, size):
        raise ValueError(f"leakage on {dataset_name} takes uint8 [N, 1, {size}, {size}] samples, got {samples.dtype} {tuple(samples.shape)}")
    return judged_transformed(net, samples).float().mean().item()
