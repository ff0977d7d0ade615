"""The EDM denoising loss with ScoreAug: lambda(sigma) |D(T_w(y + n); sigma, w) - T_w(y)|^2.

Clean-data augmentation (EDM's non-leaky style, label `a`) transforms y before the noise; ScoreAug
(label `w`) transforms the noisy input and the target alike; the network is conditioned on
concat(a, w). Both come from pipes the loss is handed; with identity pipes this is plain EDM.
"""

from __future__ import annotations

import torch

from trainables.config import AugmentConfig, DiffusionConfig, ScoreAugConfig, TrialConfig
from trainables.networks import EDMPrecond, build_denoiser
from trainables.transforms import IDENTITY_PIPE, LABEL_DIM, AugmentPipe, apply_transform, noise_scale, transform_label

AUG_DIM = 2 * LABEL_DIM  # clean-data label, then ScoreAug label


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def build_trial_denoiser(config: TrialConfig, resolution: int, channels: int) -> EDMPrecond:
    """The denoiser a trial trains: its model, the labels this loss feeds, and the data scale its loss weights by."""
    return build_denoiser(resolution, channels, AUG_DIM, sigma_data=config.diffusion.sigma_data, **config.resolved_model())


class ScoreAugLoss:
    """A callable `loss(net, images, generator) -> per-sample loss`, in the shape of EDM's loss classes.

    Noise and transform draws come from `generator`, on its device: one batched draw per step, no per-sample work.
    `mode` "noisy" transforms y + n (ScoreAug); "clean" transforms y and adds fresh noise. `scaled_sigma` hands the
    network the transformed noise level (noisy mode only, as the config also insists).
    """

    def __init__(
        self,
        diffusion: DiffusionConfig,
        score_pipe: AugmentPipe = IDENTITY_PIPE,
        clean_pipe: AugmentPipe = IDENTITY_PIPE,
        mode: str = "noisy",
        scaled_sigma: bool = False,
    ):
        if scaled_sigma and mode != "noisy":
            raise ValueError("scaled_sigma applies to mode 'noisy' only: in clean mode the noise is never transformed")
        self.diffusion = diffusion
        self.score_pipe, self.clean_pipe = score_pipe, clean_pipe
        self.mode, self.scaled_sigma = mode, scaled_sigma

    @classmethod
    def from_configs(cls, score_augment: ScoreAugConfig, clean_augment: AugmentConfig, diffusion: DiffusionConfig):
        return cls(diffusion, AugmentPipe(score_augment), AugmentPipe(clean_augment), score_augment.mode,
                   score_augment.preconditioning_sigma == "scaled")

    def __call__(self, net, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, size, device = images.shape[0], images.shape[-1], images.device
        d = self.diffusion
        sigma = (torch.randn(n, generator=generator, device=generator.device) * d.P_std + d.P_mean).exp().to(device)
        noise = torch.randn(images.shape, generator=generator, device=generator.device).to(device) * sigma.view(-1, 1, 1, 1)
        clean_draw = self.clean_pipe(n, size, generator).to(device)
        score_draw = self.score_pipe(n, size, generator).to(device)

        clean = apply_transform(images, clean_draw)
        target = apply_transform(clean, score_draw)
        if self.mode == "noisy":
            noisy = apply_transform(clean + noise, score_draw)
        else:
            noisy = target + noise
        net_sigma = sigma * noise_scale(score_draw) if self.scaled_sigma else sigma
        labels = torch.cat([transform_label(clean_draw), transform_label(score_draw)], dim=1)
        denoised = net(noisy, net_sigma, labels)
        per_pixel = edm_weight(sigma, d.sigma_data).view(-1, 1, 1, 1) * (denoised.float() - target) ** 2
        return per_pixel.flatten(1).mean(1)
