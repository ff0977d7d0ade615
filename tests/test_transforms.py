"""ScoreAug transforms: linear, labelled, invertible where they should be, applied alike to input and target."""

import pytest
import torch

from trainables.config import ALL_TRANSFORMS, AugmentConfig, DiffusionConfig, ScoreAugConfig
from trainables.loss import ScoreAugLoss
from trainables.transforms import (IDENTITY_PIPE, LABEL_DIM, AugmentPipe, apply_transform, draw_transforms, identity_draw, noise_scale,
                                   transform_label)


def _draw(names, n=32, size=8, p=1.0, seed=0, **strengths):
    policy = AugmentConfig(p=p, transforms=list(names), **strengths)
    return draw_transforms(policy, n, size, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ALL_TRANSFORMS)
def test_every_transform_is_linear(name):
    draw = _draw([name])
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randn(32, 3, 8, 8, generator=g)
    lhs = apply_transform(2.5 * x - 0.7 * y, draw)
    rhs = 2.5 * apply_transform(x, draw) - 0.7 * apply_transform(y, draw)
    assert torch.allclose(lhs, rhs, atol=1e-5)


@pytest.mark.parametrize("name", ALL_TRANSFORMS)
def test_label_names_the_transform(name):
    draw = _draw([name])
    label = transform_label(draw)
    slots = {"hflip": [0], "vflip": [1], "rot90": [2, 3], "translate": [4, 5], "brightness": [6], "cutout": [7]}[name]
    others = [i for i in range(LABEL_DIM) if i not in slots]
    assert label[:, others].abs().sum() == 0
    assert (label[:, slots].abs().sum(1) > 0).float().mean() > 0.8  # a zero shift is the only identity-like draw


def test_transforms_match_reference_operations():
    x = torch.arange(2 * 64, dtype=torch.float32).view(2, 1, 8, 8)
    for name, expected in [("hflip", x.flip(-1)), ("vflip", x.flip(-2))]:
        assert torch.equal(apply_transform(x, _draw([name], n=2)), expected)
    draw = _draw(["rot90"], n=2)
    for i in range(2):
        assert torch.equal(apply_transform(x, draw)[i], torch.rot90(x[i], int(draw.rot_k[i]), dims=(-2, -1)))
    draw = _draw(["translate"], n=2, translate_max=0.25)
    out = apply_transform(x, draw)
    for i in range(2):
        dx, dy = draw.shift[i].tolist()
        shifted = torch.roll(x[i], shifts=(dy, dx), dims=(-2, -1))
        valid = torch.zeros(8, 8, dtype=torch.bool)
        valid[max(dy, 0): 8 + min(dy, 0), max(dx, 0): 8 + min(dx, 0)] = True
        assert torch.equal(out[i][:, valid], shifted[:, valid])
        assert out[i][:, ~valid].abs().sum() == 0


def test_identity_label_is_all_zeros_and_p0_draws_identity():
    draw = _draw(ALL_TRANSFORMS, p=0.0)
    assert torch.equal(transform_label(draw), torch.zeros(32, LABEL_DIM))
    x = torch.randn(32, 1, 8, 8)
    assert torch.equal(apply_transform(x, draw), x)
    assert torch.equal(transform_label(identity_draw(4, 8)), torch.zeros(4, LABEL_DIM))


def test_unlabelled_policy_hides_the_transform():
    policy = AugmentConfig(p=1.0, transforms=["rot90"], use_label=False)
    draw = draw_transforms(policy, 16, 8, torch.Generator().manual_seed(0))
    assert transform_label(draw).abs().sum() == 0
    assert not torch.equal(apply_transform(torch.randn(16, 1, 8, 8), draw), torch.zeros(16, 1, 8, 8))


def test_inverse_pairs_give_the_input_back():
    x = torch.randn(16, 2, 8, 8)
    for name in ("hflip", "vflip"):
        draw = _draw([name], n=16)
        assert torch.equal(apply_transform(apply_transform(x, draw), draw), x)
    draw = _draw(["rot90"], n=16)
    out = x
    for _ in range(4):
        out = apply_transform(out, draw)
    assert torch.equal(out, x)


def test_draw_probability_and_uniform_choice():
    draw = _draw(["hflip", "rot90"], n=20000, p=0.3)
    applied = draw.kind >= 0
    assert abs(applied.float().mean().item() - 0.3) < 0.02
    share = (draw.kind[applied] == ALL_TRANSFORMS.index("hflip")).float().mean().item()
    assert abs(share - 0.5) < 0.03


def test_brightness_scales_noise_and_only_brightness():
    draw = _draw(["brightness", "hflip"], n=64, brightness_max=2.0)
    scale = noise_scale(draw)
    is_b = draw.kind == ALL_TRANSFORMS.index("brightness")
    assert torch.all(scale[~is_b] == 1) and torch.all((scale[is_b] >= 0.5) & (scale[is_b] <= 2.0))


class _Recorder(torch.nn.Module):
    def forward(self, x, sigma, labels):
        self.seen = (x.detach().clone(), sigma.detach().clone(), labels.detach().clone())
        return torch.zeros_like(x)


@pytest.mark.parametrize("mode", ["noisy", "clean"])
def test_scoreaug_transforms_input_and_target_alike(mode):
    """With D = 0 the loss is lambda*|T(y)|^2: the target is the transformed clean image; the input is T(y+n) or T(y)+n."""
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    config = ScoreAugConfig(p=1.0, transforms=["rot90", "translate", "cutout"], mode=mode)
    loss_fn = ScoreAugLoss.from_configs(config, AugmentConfig(), DiffusionConfig())
    net = _Recorder()
    loss = loss_fn(net, images, torch.Generator().manual_seed(3))
    # Replay the same random draws to rebuild what the loss saw.
    g = torch.Generator().manual_seed(3)
    d = DiffusionConfig()
    sigma = (torch.randn(16, generator=g) * d.P_std + d.P_mean).exp()
    noise = torch.randn(images.shape, generator=g) * sigma.view(-1, 1, 1, 1)
    draw_transforms(AugmentConfig(), 16, 8, g)
    draw = draw_transforms(config, 16, 8, g)
    target = apply_transform(images, draw)
    expected_input = apply_transform(images + noise, draw) if mode == "noisy" else target + noise
    x, seen_sigma, labels = net.seen
    assert torch.allclose(x, expected_input, atol=1e-6)
    assert torch.allclose(seen_sigma, sigma)
    assert torch.equal(labels[:, LABEL_DIM:], transform_label(draw))
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    assert torch.allclose(loss, weight * target.pow(2).flatten(1).mean(1), rtol=1e-5)


def _replayed_noise(images, seed):
    """The sigma and noise a loss draws first from a generator seeded with `seed`."""
    g, d = torch.Generator().manual_seed(seed), DiffusionConfig()
    sigma = (torch.randn(images.shape[0], generator=g) * d.P_std + d.P_mean).exp()
    return sigma, torch.randn(images.shape, generator=g) * sigma.view(-1, 1, 1, 1), g


def test_identity_pipes_make_the_loss_plain_edm():
    """Handed no pipes, the loss is EDM's: lambda(sigma) |D(y + n; sigma) - y|^2, with all-zero labels."""
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    net = _Recorder()
    loss = ScoreAugLoss(DiffusionConfig())(net, images, torch.Generator().manual_seed(5))
    sigma, noise, _ = _replayed_noise(images, 5)
    x, _, labels = net.seen
    assert torch.allclose(x, images + noise, atol=1e-6) and labels.abs().sum() == 0
    assert torch.allclose(loss, (sigma**2 + 0.25) / (sigma * 0.5) ** 2 * images.pow(2).flatten(1).mean(1), rtol=1e-5)


def test_a_policy_with_p_zero_is_an_identity_pipe():
    draw = AugmentPipe(AugmentConfig(p=0.0, transforms=list(ALL_TRANSFORMS)))(256, 8, torch.Generator().manual_seed(0))
    images = torch.randn(256, 3, 8, 8)
    assert torch.equal(apply_transform(images, draw), images) and transform_label(draw).abs().sum() == 0
    assert torch.equal(IDENTITY_PIPE(4, 8, torch.Generator()).kind, identity_draw(4, 8).kind)


@pytest.mark.parametrize("augmented", ["clean", "score"])
def test_clean_and_score_labels_fill_their_own_columns(augmented):
    """The network sees concat(clean label a, ScoreAug label w): the first LABEL_DIM columns are the clean-data
    augmentation's, the rest ScoreAug's. A clean flip is applied before the noise, a ScoreAug flip after it."""
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    flip, none = AugmentConfig(p=1.0, transforms=["hflip"]), AugmentConfig()
    score = ScoreAugConfig(p=1.0, transforms=["hflip"]) if augmented == "score" else ScoreAugConfig()
    net = _Recorder()
    ScoreAugLoss.from_configs(score, flip if augmented == "clean" else none, DiffusionConfig())(
        net, images, torch.Generator().manual_seed(7))
    _, noise, _ = _replayed_noise(images, 7)
    x, _, labels = net.seen
    flipped_cols, identity_cols = (slice(0, LABEL_DIM), slice(LABEL_DIM, None))[:: 1 if augmented == "clean" else -1]
    assert labels.shape == (16, 2 * LABEL_DIM)
    assert torch.all(labels[:, flipped_cols][:, 0] == 1) and labels[:, flipped_cols][:, 1:].abs().sum() == 0
    assert labels[:, identity_cols].abs().sum() == 0
    expected = images.flip(-1) + noise if augmented == "clean" else (images + noise).flip(-1)
    assert torch.allclose(x, expected, atol=1e-6)


def test_scaled_sigma_is_refused_in_clean_mode():
    with pytest.raises(ValueError, match="noisy"):
        ScoreAugLoss(DiffusionConfig(), mode="clean", scaled_sigma=True)
