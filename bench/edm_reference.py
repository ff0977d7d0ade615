"""EDM's training step for the benchmarks: NVlabs/edm's own code loaded from outside this repository, and a
re-implementation of its operations for hosts that have no copy of it.

`load_edm(source)` imports EDM's real `training/networks.py` and `training/loss.py` (and `training/augment.py`)
from a checkout or a bare git directory of https://github.com/NVlabs/edm, extracted to a temporary folder: EDM's
code is never copied into this project. Its `torch_utils.persistence` decorator (pickling with source code) is
replaced by the identity, which changes no computation. bench/train_step.py times it beside our step.

The rest of this module re-implements, op for op, what EDM's code runs (`EDMPrecond` + `SongUNet` in its DDPM++
form + `EDMLoss` + an Adam step, fp32): matmul linears, depthwise (transposed) convolutions with the [1, 1] filter
for resampling, `F.dropout`, the einsum attention with its own backward, in-place adds, and its initialisation,
not its API. bench/network_step.py times it beside our network, and tests/test_networks.py checks that the two
compute the same function.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import silu

SIGMA_DATA = 0.5


def _xavier_uniform(shape: list[int], fan_in: int, fan_out: int) -> torch.Tensor:
    return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(_xavier_uniform([out_features, in_features], in_features, out_features) * gain)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weight.t()
        return x.add_(self.bias) if self.bias is not None else x


class Conv2d(nn.Module):
    """A convolution (kernel 0 = none) with optional 2x resampling by a depthwise [1, 1] filter, as EDM's."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, up: bool = False, down: bool = False,
                 gain: float = 1.0):
        super().__init__()
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        self.weight = self.bias = None
        if kernel:
            shape = [out_channels, in_channels, kernel, kernel]
            self.weight = nn.Parameter(_xavier_uniform(shape, in_channels * kernel**2, out_channels * kernel**2) * gain)
            self.bias = nn.Parameter(torch.zeros(out_channels))
        box = torch.ones(2)
        resample_filter = (box.ger(box) / box.sum() ** 2)[None, None] if up or down else None
        self.register_buffer("resample_filter", resample_filter, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.resample_filter
        if self.up:
            x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2)
        if self.down:
            x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2)
        if self.weight is not None:
            x = F.conv2d(x, self.weight, padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            x = x.add_(self.bias.reshape(1, -1, 1, 1))
        return x


class GroupNorm(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.groups, self.eps = min(32, channels // 4), eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


class AttentionWeights(torch.autograd.Function):
    """softmax(q^T k / sqrt(c)) in float32 with a hand-written backward, as EDM computes attention."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(k.shape[1])
        w = torch.einsum("ncq,nck->nqk", q.float(), (k / scale).float()).softmax(dim=2).to(q.dtype)
        ctx.save_for_backward(q, k, w)
        return w

    @staticmethod
    def backward(ctx, dw: torch.Tensor):
        q, k, w = ctx.saved_tensors
        scale = math.sqrt(k.shape[1])
        db = torch._softmax_backward_data(grad_output=dw.float(), output=w.float(), dim=2, input_dtype=torch.float32)
        dq = torch.einsum("nck,nqk->ncq", k.float(), db).to(q.dtype) / scale
        dk = torch.einsum("ncq,nqk->nck", q.float(), db).to(k.dtype) / scale
        return dq, dk


class UNetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels, self.dropout, self.attention = in_channels, out_channels, dropout, attention
        self.skip_scale = math.sqrt(0.5)
        self.norm0 = GroupNorm(in_channels)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down)
        self.affine = Linear(emb_channels, out_channels)
        self.norm1 = GroupNorm(out_channels)
        self.conv1 = Conv2d(out_channels, out_channels, 3, gain=1e-5)
        self.skip = Conv2d(in_channels, out_channels, 1, up=up, down=down) if out_channels != in_channels or up or down else None
        if attention:
            self.norm2 = GroupNorm(out_channels)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, gain=math.sqrt(0.2))
            self.proj = Conv2d(out_channels, out_channels, 1, gain=1e-5)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(silu(self.norm0(x)))
        x = silu(self.norm1(x.add_(self.affine(emb)[:, :, None, None])))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(self.skip(orig) if self.skip is not None else orig) * self.skip_scale
        if self.attention:
            q, k, v = self.qkv(self.norm2(x)).reshape(x.shape[0], x.shape[1], 3, -1).unbind(2)
            a = torch.einsum("nqk,nck->ncq", AttentionWeights.apply(q, k), v)
            x = self.proj(a.reshape(*x.shape)).add_(x) * self.skip_scale
        return x


class SongUNet(nn.Module):
    """DDPM++: positional noise embedding, standard encoder and decoder, resample filter [1, 1]."""

    def __init__(self, resolution: int, channels: int, augment_dim: int, model_channels: int,
                 channel_mult: list[int], num_blocks: int, attn_resolutions: list[int], dropout: float):
        super().__init__()
        emb_channels = model_channels * 4
        block = dict(emb_channels=emb_channels, dropout=dropout)
        half = model_channels // 2
        freqs = (1 / 10000) ** (torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.map_augment = Linear(augment_dim, model_channels, bias=False)
        self.map_layer0 = Linear(model_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)

        self.enc = nn.ModuleDict()
        cout = channels
        for level, mult in enumerate(channel_mult):
            res = resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [b.out_channels for b in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attention, **block)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, channels, 3, gain=1e-5)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, augment_labels: torch.Tensor) -> torch.Tensor:
        emb = noise_labels.ger(self.freqs)
        emb = torch.cat([emb.cos(), emb.sin()], dim=1)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # EDM swaps to [sin, cos]
        emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(silu(self.out_norm(x)))


class EDMPrecond(nn.Module):
    def __init__(self, resolution: int, channels: int, augment_dim: int, **architecture):
        super().__init__()
        self.model = SongUNet(resolution, channels, augment_dim, **architecture)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, augment_labels: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1, 1, 1, 1)
        c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
        c_out = sigma * SIGMA_DATA / (sigma**2 + SIGMA_DATA**2).sqrt()
        c_in = 1 / (SIGMA_DATA**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * self.model(c_in * x, c_noise.flatten(), augment_labels)


def edm_loss(net: EDMPrecond, images: torch.Tensor, augment_labels: torch.Tensor,
             p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """EDMLoss, summed and divided by the batch as EDM's training loop does before backward."""
    sigma = (torch.randn([images.shape[0], 1, 1, 1]) * p_std + p_mean).exp()
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    denoised = net(images + torch.randn_like(images) * sigma, sigma, augment_labels)
    return (weight * (denoised - images) ** 2).sum() / images.shape[0]


EDM_FILES = ("dnnlib", "torch_utils", "training")


def load_edm(source: str | Path, modules: tuple[str, ...] = ("networks", "loss")) -> types.SimpleNamespace:
    """EDM's `training.<module>` modules from `source`: a checkout of NVlabs/edm (a folder holding
    training/networks.py) or a bare git directory of one (its HEAD extracted once into the temporary folder).
    `augment` also imports EDM's dnnlib, which needs `requests` and Python's distutils (3.11 or older)."""
    source = Path(source).expanduser().resolve()
    if (source / "training" / "networks.py").is_file():
        root = source
    elif (source / "HEAD").is_file():
        git = ["git", f"--git-dir={source}"]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
        root = Path(tempfile.gettempdir()) / f"nvlabs-edm-{commit[:12]}"
        if not (root / "training" / "networks.py").is_file():
            root.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run([*git, "archive", "HEAD", *EDM_FILES], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    else:
        raise FileNotFoundError(f"{source} holds no NVlabs/edm code: give a checkout of https://github.com/NVlabs/edm "
                                "(git clone https://github.com/NVlabs/edm DIR) or its git directory")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    torch_utils = importlib.import_module("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    persistence.persistent_class = lambda cls: cls
    sys.modules["torch_utils.persistence"] = torch_utils.persistence = persistence
    return types.SimpleNamespace(root=root, **{name: importlib.import_module(f"training.{name}") for name in modules})
