"""EDM's DDPM++ denoiser: the `SongUNet` architecture inside `EDMPrecond` preconditioning.

Architecture, initialisation and preconditioning follow NVlabs/edm `training/networks.py`
(DDPM++ config: positional noise embedding, standard encoder and decoder, resample filter
[1, 1]), so our baselines are EDM's. The augmentation label enters as in EDM's non-leaky
augmentation: a bias-free linear map added to the noise embedding, so the all-zero label
(the identity transform) is exactly the unconditional network.

Parameter names match EDM's (`model.enc['32x32_block0'].conv0.weight`, ...) except the output
head, which is `out_norm`/`out_conv` here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

SIGMA_DATA = 0.5

MODEL_PRESETS: dict[str, dict] = {
    # 8x8 demo, the fastest preset (~0.3 M parameters).
    "digits-tiny": dict(model_channels=32, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[], dropout=0.10),
    # 8x8 benchmark configuration (~1.0 M parameters).
    "digits": dict(model_channels=32, channel_mult=[1, 2], num_blocks=2, attn_resolutions=[], dropout=0.10),
    # 32x32, small enough for a CPU study (~1.2 M parameters, ~70 img/s per core).
    "mnist-small": dict(model_channels=32, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[], dropout=0.10),
    # 32x32 (MNIST padded to 32).
    "mnist": dict(model_channels=64, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8], dropout=0.10),
    # EDM's DDPM++ for CIFAR-10 (55.73 M parameters with a 9-dim augmentation label).
    "ddpmpp-cifar": dict(model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.13),
}


def _xavier(module: nn.Conv2d | nn.Linear, gain: float = 1.0) -> nn.Conv2d | nn.Linear:
    """EDM's init for every DDPM++ layer: xavier-uniform weights times `gain`, zero bias.

    A gain of 1e-5 on the last layer of each residual branch makes every block start close to
    the identity, which is what keeps early training stable.
    """
    nn.init.xavier_uniform_(module.weight, gain=gain)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def _conv(in_channels: int, out_channels: int, kernel: int, gain: float = 1.0) -> nn.Conv2d:
    return _xavier(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2), gain)


def _linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    return _xavier(nn.Linear(in_features, out_features, bias=bias))


def _group_norm(channels: int) -> nn.GroupNorm:
    """EDM's GroupNorm: 32 groups, but at least 4 channels per group."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


def _resample(x: torch.Tensor, mode: str | None) -> torch.Tensor:
    """EDM's [1, 1] resample filter: a 2x2 box (average pool) down, nearest-neighbour up.

    Same values as EDM's depthwise (transposed) convolution with that filter, computed by
    torch's native pooling and interpolation kernels, which are much faster on CPU.
    """
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, with a cheaper mask on CPU.

    torch's CPU random numbers are drawn serially, one draw per element; with bernoulli_ the
    masks took about a tenth of the digits training step. Here four elements share one 64-bit
    draw, 16 bits each, so the drop probability is p rounded to a multiple of 2**-16.
    """
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p=p, training=True)
    n = x.numel()
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64).view(torch.int16)
    keep = bits[:n].view(x.shape) >= round(p * 65536) - 32768
    return x * keep.to(x.dtype).mul_(1 / (1 - p))


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise label, as [sin, cos] (EDM: endpoint=True, 10000 positions)."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        half = num_channels // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x.to(torch.float32), self.freqs)
        return torch.cat([x.sin(), x.cos()], dim=1)


class UNetBlock(nn.Module):
    """DDPM++ residual block, optionally resampling and optionally followed by self-attention.

    Each residual branch ends in a near-zero-initialised layer and is summed with its skip path
    times sqrt(1/2), so a block starts close to the identity and activations keep their scale.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        resample: str | None = None,  # "down", "up" or None
        attention: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resample = resample
        self.dropout = dropout
        self.skip_scale = math.sqrt(0.5)

        self.norm0 = _group_norm(in_channels)
        self.conv0 = _conv(in_channels, out_channels, 3)
        self.affine = _linear(emb_channels, out_channels)
        self.norm1 = _group_norm(out_channels)
        self.conv1 = _conv(out_channels, out_channels, 3, gain=1e-5)
        self.skip = _conv(in_channels, out_channels, 1) if in_channels != out_channels or resample else None

        self.attention = attention
        if attention:
            self.norm2 = _group_norm(out_channels)
            self.qkv = _conv(out_channels, out_channels * 3, 1, gain=math.sqrt(0.2))
            self.proj = _conv(out_channels, out_channels, 1, gain=1e-5)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # In-place updates only touch fresh conv outputs, which autograd does not keep.
        h = self.conv0(_resample(F.silu(self.norm0(x)), self.resample))
        h = F.silu(self.norm1(h.add_(self.affine(emb)[:, :, None, None].to(h.dtype))))
        h = self.conv1(_dropout(h, self.dropout, self.training))
        skip = x if self.skip is None else self.skip(_resample(x, self.resample))
        x = h.add_(skip).mul_(self.skip_scale)
        if self.attention:
            x = self.proj(self._attend(self.norm2(x))).add_(x).mul_(self.skip_scale)
        return x

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """Single-head self-attention over pixels; q, k, v interleaved per channel as in EDM's qkv layer."""
        n, c, height, width = x.shape
        q, k, v = self.qkv(x).reshape(n, 1, c, 3, height * width).unbind(3)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return a.transpose(-1, -2).reshape(n, c, height, width)


class SongUNet(nn.Module):
    """EDM's DDPM++ U-Net: F(c_in x; c_noise, aug_labels), the raw network inside the preconditioning.

    As in EDM, the first decoder block at the lowest resolution always has self-attention;
    `attn_resolutions` adds it elsewhere.
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        aug_dim: int = 0,  # augmentation label size; 0: no label input
        model_channels: int = 128,
        channel_mult: Sequence[int] = (2, 2, 2),
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        channel_mult_emb: int = 4,
    ):
        super().__init__()
        levels = len(channel_mult)
        if levels < 1 or img_resolution % (1 << (levels - 1)):
            raise ValueError(
                f"img_resolution {img_resolution} is not divisible by 2**{levels - 1} "
                f"(channel_mult {list(channel_mult)} has {levels} levels)"
            )
        self.aug_dim = aug_dim
        emb_channels = model_channels * channel_mult_emb
        block = partial(UNetBlock, emb_channels=emb_channels, dropout=dropout)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = _linear(aug_dim, model_channels, bias=False) if aug_dim else None
        self.map_layer0 = _linear(model_channels, emb_channels)
        self.map_layer1 = _linear(emb_channels, emb_channels)

        self.enc = nn.ModuleDict()
        skip_channels = []
        cout = model_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = _conv(in_channels, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, resample="down")
            skip_channels.append(cout)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = block(cin, cout, attention=res in attn_resolutions)
                skip_channels.append(cout)

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == levels - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, resample="up")
            for idx in range(num_blocks + 1):
                cin, cout = cout + skip_channels.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = block(cin, cout, attention=attn)

        self.out_norm = _group_norm(cout)
        self.out_conv = _conv(cout, out_channels, 3, gain=1e-5)

    def forward(
        self, x: torch.Tensor, noise_labels: torch.Tensor, aug_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if aug_labels is not None and self.map_augment is not None:
            emb = emb + self.map_augment(aug_labels.to(emb.dtype))
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        skips = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:  # a block wider than x takes the matching encoder output
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise): EDM's preconditioning around the raw network.

    Scales the network's input and target to unit variance at every noise level; computes in
    float32, and under a caller's autocast the final skip combination stays float32.
    """

    def __init__(self, model: SongUNet, img_resolution: int, img_channels: int, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.model = model
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.aug_dim = model.aug_dim
        self.sigma_data = sigma_data

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor | float, aug_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [N, C, H, W]; sigma a scalar, [N] or [N, 1, 1, 1]; aug_labels [N, aug_dim], or None for the unconditional
        denoiser that sampling and the loss probes use (the identity label, bit for bit)."""
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        sigma = sigma.expand(x.shape[0], 1, 1, 1)
        if aug_labels is not None and aug_labels.shape[-1] != self.aug_dim:
            raise ValueError(f"aug_labels has {aug_labels.shape[-1]} columns; this network takes {self.aug_dim}")

        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log() / 4

        F_x = self.model(c_in * x, c_noise.flatten(), aug_labels)
        return c_skip * x + c_out * F_x.to(torch.float32)


def build_denoiser(
    img_resolution: int,
    img_channels: int,
    aug_dim: int,
    model_channels: int,
    channel_mult: list[int],
    num_blocks: int,
    attn_resolutions: list[int],
    dropout: float,
    sigma_data: float = SIGMA_DATA,
) -> EDMPrecond:
    """The preconditioned DDPM++ denoiser for `img_channels` x `img_resolution`^2 images whose standard deviation
    is `sigma_data`: the loss weight must use the same value, or c_skip/c_out/c_in no longer match lambda(sigma)."""
    model = SongUNet(
        img_resolution=img_resolution,
        in_channels=img_channels,
        out_channels=img_channels,
        aug_dim=aug_dim,
        model_channels=model_channels,
        channel_mult=channel_mult,
        num_blocks=num_blocks,
        attn_resolutions=attn_resolutions,
        dropout=dropout,
    )
    return EDMPrecond(model, img_resolution=img_resolution, img_channels=img_channels, sigma_data=sigma_data)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
