"""The EDM denoising loss with ScoreAug: lambda(sigma) |D(T_w(y + n); sigma, w) - T_w(y)|^2.

Clean-data augmentation (EDM's non-leaky style, label `a`) transforms y before the noise; ScoreAug
(label `w`) transforms the noisy input and the target alike; the network is conditioned on
concat(a, w). With both probabilities at 0 every draw is the identity and this is plain EDM.
"""

from __future__ import annotations

import torch

from trainables.config import AugmentConfig, DiffusionConfig, ScoreAugConfig
from trainables.transforms import LABEL_DIM, apply_transform, draw_transforms, noise_scale, transform_label

AUG_DIM = 2 * LABEL_DIM  # clean-data label, then ScoreAug label


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class ScoreAugLoss:
    """A callable `loss(net, images, generator) -> per-sample loss`, in the shape of EDM's loss classes.

    Noise and transform draws come from `generator`, on its device: one batched draw per step, no per-sample work.
    """

    def __init__(self, score_augment: ScoreAugConfig, clean_augment: AugmentConfig, diffusion: DiffusionConfig):
        self.score_augment = score_augment
        self.clean_augment = clean_augment
        self.diffusion = diffusion

    def __call__(self, net, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, size, device = images.shape[0], images.shape[-1], images.device
        d = self.diffusion
        sigma = (torch.randn(n, generator=generator, device=generator.device) * d.P_std + d.P_mean).exp().to(device)
        noise = torch.randn(images.shape, generator=generator, device=generator.device).to(device) * sigma.view(-1, 1, 1, 1)
        clean_draw = draw_transforms(self.clean_augment, n, size, generator).to(device)
        score_draw = draw_transforms(self.score_augment, n, size, generator).to(device)

        clean = apply_transform(images, clean_draw)
        target = apply_transform(clean, score_draw)
        if self.score_augment.mode == "noisy":
            noisy = apply_transform(clean + noise, score_draw)
        else:
            noisy = target + noise
        net_sigma = sigma
        if self.score_augment.preconditioning_sigma == "scaled" and self.score_augment.mode == "noisy":
            net_sigma = sigma * noise_scale(score_draw)
        labels = torch.cat([transform_label(clean_draw), transform_label(score_draw)], dim=1)
        denoised = net(noisy, net_sigma, labels)
        per_pixel = edm_weight(sigma, d.sigma_data).view(-1, 1, 1, 1) * (denoised.float() - target) ** 2
        return per_pixel.flatten(1).mean(1)
