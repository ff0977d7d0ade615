"""ScoreAug's transforms: per-sample linear maps on image batches, and the labels that describe them.

A draw fixes, for each sample, which transform applies (or none) and its parameters; the same
draw is then applied to the noisy input and to the clean target. Every transform is linear in
the image, so T(y + n) = T(y) + T(n). The label of the identity is all zeros, which is also what
the sampler feeds, so an untransformed sample and a generated one look alike to the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainables.config import ALL_TRANSFORMS, AugmentConfig

IDENTITY = -1
KIND = {name: index for index, name in enumerate(ALL_TRANSFORMS)}
# Label slots: hflip, vflip, rot90 (sin, cos - 1), translate (dx, dy as fractions), brightness (log s), cutout (side fraction).
LABEL_DIM = 8


@dataclass(frozen=True)
class TransformDraw:
    """Per-sample transform parameters; `kind` is IDENTITY or an index into ALL_TRANSFORMS."""

    kind: torch.Tensor  # [N] long
    rot_k: torch.Tensor  # [N] long, quarter turns counter-clockwise
    shift: torch.Tensor  # [N, 2] long, (dx, dy) in pixels
    scale: torch.Tensor  # [N] float, brightness factor
    cut_size: torch.Tensor  # [N] long, side of the cut square
    cut_origin: torch.Tensor  # [N, 2] long, (x, y) of its top-left corner
    size: int  # image side the draw was made for
    labelled: bool = True

    def to(self, device: torch.device | str) -> "TransformDraw":
        moved = {f: getattr(self, f).to(device) for f in ("kind", "rot_k", "shift", "scale", "cut_size", "cut_origin")}
        return TransformDraw(**moved, size=self.size, labelled=self.labelled)

    def is_(self, name: str) -> torch.Tensor:
        return self.kind == KIND[name]


def identity_draw(n: int, size: int, device: torch.device | str = "cpu") -> TransformDraw:
    zeros = torch.zeros(n, dtype=torch.long, device=device)
    return TransformDraw(
        kind=torch.full((n,), IDENTITY, dtype=torch.long, device=device),
        rot_k=zeros,
        shift=torch.zeros(n, 2, dtype=torch.long, device=device),
        scale=torch.ones(n, device=device),
        cut_size=zeros,
        cut_origin=torch.zeros(n, 2, dtype=torch.long, device=device),
        size=size,
    )


def draw_transforms(policy: AugmentConfig, n: int, size: int, generator: torch.Generator) -> TransformDraw:
    """With probability p per sample, one transform drawn uniformly from the policy's set: one batched draw on
    the generator's device (the same numbers on any device type for a CPU generator)."""
    device = generator.device
    enabled = torch.tensor([KIND[name] for name in policy.transforms] or [IDENTITY], device=device)
    applied = torch.rand(n, generator=generator, device=device) < policy.p
    choice = enabled[torch.randint(len(enabled), (n,), generator=generator, device=device)]
    kind = torch.where(applied, choice, torch.full_like(choice, IDENTITY))

    max_shift = max(1, round(policy.translate_max * size))
    log_b = math.log(policy.brightness_max)
    cut_lo = max(1, round(policy.cutout_min * size))
    cut_hi = max(cut_lo, round(policy.cutout_max * size))
    cut_size = torch.randint(cut_lo, cut_hi + 1, (n,), generator=generator, device=device)
    room = (size - cut_size + 1).unsqueeze(1)
    return TransformDraw(
        kind=kind,
        rot_k=torch.randint(1, 4, (n,), generator=generator, device=device),
        shift=torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator, device=device),
        scale=torch.exp((torch.rand(n, generator=generator, device=device) * 2 - 1) * log_b),
        cut_size=cut_size,
        cut_origin=(torch.rand(n, 2, generator=generator, device=device) * room).long(),
        size=size,
        labelled=policy.use_label,
    )


class AugmentPipe:
    """A batch's transform draws under one policy: what a loss is handed, as EDM's loss is handed its augment_pipe.

    Without a policy it is the identity pipe and draws nothing. A policy with p = 0 also yields only identities,
    but still draws its parameters, so a baseline's noise stream is the one every earlier study drew.
    """

    def __init__(self, policy: AugmentConfig | None = None):
        self.policy = policy

    def __call__(self, n: int, size: int, generator: torch.Generator) -> TransformDraw:
        if self.policy is None:
            return identity_draw(n, size, generator.device)
        return draw_transforms(self.policy, n, size, generator)


IDENTITY_PIPE = AugmentPipe()


def _source_pixels(draw: TransformDraw, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample and output pixel, the input pixel it shows ([N, H, W] rows and columns; out of range
    where a translation brings in zeros). Flips, quarter turns and shifts are all pixel moves."""
    device = draw.kind.device
    y = torch.arange(h, device=device).view(1, h, 1).expand(draw.kind.shape[0], h, w)
    x = torch.arange(w, device=device).view(1, 1, w).expand_as(y)
    k = torch.where(draw.is_("rot90"), draw.rot_k, 0).view(-1, 1, 1)
    # torch.rot90 by k quarter turns, dims (-2, -1), of a square image: out[y, x] = in[x, w-1-y], in[h-1-y, w-1-x], in[h-1-x, y]
    rows = torch.where(k == 1, x, torch.where(k == 2, h - 1 - y, torch.where(k == 3, h - 1 - x, y)))
    cols = torch.where(k == 1, w - 1 - y, torch.where(k == 2, w - 1 - x, torch.where(k == 3, y, x)))
    rows = torch.where(draw.is_("vflip").view(-1, 1, 1), h - 1 - rows, rows)
    cols = torch.where(draw.is_("hflip").view(-1, 1, 1), w - 1 - cols, cols)
    translating = draw.is_("translate").view(-1, 1, 1)
    rows = rows - torch.where(translating, draw.shift[:, 1].view(-1, 1, 1), 0)
    cols = cols - torch.where(translating, draw.shift[:, 0].view(-1, 1, 1), 0)
    return rows, cols


def _cutout_keep(draw: TransformDraw, h: int, w: int, device: torch.device) -> torch.Tensor:
    """1 outside the cut square, 0 inside; all ones for samples not cut."""
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    x0, y0 = draw.cut_origin[:, 0].view(-1, 1, 1), draw.cut_origin[:, 1].view(-1, 1, 1)
    size = draw.cut_size.view(-1, 1, 1)
    inside = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    inside &= draw.is_("cutout").view(-1, 1, 1)
    return ~inside


def apply_transform(images: torch.Tensor, draw: TransformDraw) -> torch.Tensor:
    """T_w(images) for each sample's own w; a linear map, so it applies to noisy and clean images alike.

    One gather moves every sample's pixels (flip, quarter turn or shift) and one multiply applies brightness,
    cutout and the zeros a shift brings in: the same few kernels whatever the draw, and no host sync.
    """
    n, c, h, w = images.shape
    rows, cols = _source_pixels(draw, h, w)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    moved = images.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    factor = torch.where(draw.is_("brightness"), draw.scale, torch.ones_like(draw.scale)).view(-1, 1, 1)
    mask = (inside & _cutout_keep(draw, h, w, images.device)).to(images.dtype) * factor.to(images.dtype)
    return moved * mask.unsqueeze(1)


def transform_label(draw: TransformDraw) -> torch.Tensor:
    """[N, LABEL_DIM] label of each sample's transform; zeros for the identity, or for all when unlabelled."""
    n = draw.kind.shape[0]
    label = torch.zeros(n, LABEL_DIM, device=draw.kind.device)
    if not draw.labelled:
        return label
    rot = draw.is_("rot90").float()
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=label.device)[draw.rot_k]
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=label.device)[draw.rot_k]
    trans = draw.is_("translate").float().unsqueeze(1)
    label[:, 0] = draw.is_("hflip").float()
    label[:, 1] = draw.is_("vflip").float()
    label[:, 2] = rot * sin
    label[:, 3] = rot * (cos - 1)
    label[:, 4:6] = trans * draw.shift.float() / draw.size
    label[:, 6] = draw.is_("brightness").float() * torch.log(draw.scale)
    label[:, 7] = draw.is_("cutout").float() * draw.cut_size.float() / draw.size
    return label


def noise_scale(draw: TransformDraw) -> torch.Tensor:
    """[N] factor by which the transform scales the noise's standard deviation (brightness only)."""
    return torch.where(draw.is_("brightness"), draw.scale, torch.ones_like(draw.scale))
