"""EDM's deterministic Heun sampler, run on the unconditional denoiser (no augmentation label)."""

from __future__ import annotations

import torch

from trainables.config import DiffusionConfig


def edm_sigmas(num_steps: int, diffusion: DiffusionConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """EDM's rho-spaced noise levels from sigma_max down to sigma_min, then 0."""
    d = diffusion
    steps = torch.arange(num_steps, dtype=torch.float64, device=device)
    inv_rho = 1.0 / d.rho
    sigmas = (d.sigma_max**inv_rho + steps / (num_steps - 1) * (d.sigma_min**inv_rho - d.sigma_max**inv_rho)) ** d.rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64, device=device)])


@torch.no_grad()
def heun_sample(net, latents: torch.Tensor, num_steps: int, diffusion: DiffusionConfig) -> torch.Tensor:
    """Heun's 2nd-order ODE solve (EDM Algorithm 1 with S_churn = 0); latents are unit Gaussian."""
    sigmas = edm_sigmas(num_steps, diffusion, latents.device)
    x = latents.to(torch.float64) * sigmas[0]
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = net(x.float(), sigma.float().expand(x.shape[0])).to(torch.float64)
        slope = (x - denoised) / sigma
        x_next = x + (sigma_next - sigma) * slope
        if i < num_steps - 1:
            denoised_next = net(x_next.float(), sigma_next.float().expand(x.shape[0])).to(torch.float64)
            x_next = x + (sigma_next - sigma) * 0.5 * (slope + (x_next - denoised_next) / sigma_next)
        x = x_next
    return x.float()


def seeded_latents(seeds: list[int] | range, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """One latent per seed, independent of batch split: the same seed gives the same image on any rank."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)
