import math

import pytest
import torch
import torch.nn.functional as F

from trainables.networks import (
    MODEL_PRESETS,
    EDMPrecond,
    SongUNet,
    _dropout,
    _resample,
    build_denoiser,
    count_parameters,
)

TINY = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16], dropout=0.0)
AUG_DIM = 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These nets are tiny: one thread is as fast, and immune to a busy machine's thread stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(resolution: int = 32, channels: int = 3, aug_dim: int = AUG_DIM, **overrides) -> EDMPrecond:
    torch.manual_seed(0)
    return build_denoiser(resolution, channels, aug_dim, **{**TINY, **overrides})


def batch(n: int, channels: int, resolution: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, resolution, resolution, generator=gen)
    sigma = torch.exp(torch.randn(n, generator=gen) * 1.2 - 1.2)
    return x, sigma


def wake(net: EDMPrecond) -> EDMPrecond:
    """Give the near-zero-initialised layers ordinary weights, as training would, so that the
    conditioning and dropout paths reach the output at a measurable scale."""
    torch.manual_seed(2)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.xavier_uniform_(module.weight)
    return net


def raw_output(net: EDMPrecond, x, sigma, aug_labels=None) -> torch.Tensor:
    """F(c_in x; c_noise): the network inside the preconditioning, where label effects are not damped by c_out."""
    sd = net.sigma_data
    s = sigma.reshape(-1, 1, 1, 1)
    return net.model(x / (s**2 + sd**2).sqrt(), s.log().flatten() / 4, aug_labels)


@pytest.mark.parametrize(
    "resolution, channels, preset",
    [(8, 1, "digits-tiny"), (8, 1, "digits"), (16, 3, None), (32, 1, None), (32, 3, None), (64, 3, None)],
)
def test_output_shape(resolution, channels, preset):
    torch.manual_seed(0)
    config = MODEL_PRESETS[preset] if preset else TINY
    net = build_denoiser(resolution, channels, AUG_DIM, **config).eval()
    x, sigma = batch(2, channels, resolution)
    with torch.no_grad():
        out = net(x, sigma, torch.zeros(2, AUG_DIM))
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_preconditioning_matches_edm_formulas():
    net = tiny().eval()
    x, sigma = batch(3, 3, 32)
    labels = torch.randn(3, AUG_DIM)
    seen = {}

    def hook(module, args, output):
        seen["x_in"], seen["c_noise"], seen["labels"] = args
        seen["F"] = output

    handle = net.model.register_forward_hook(hook)
    with torch.no_grad():
        out = net(x, sigma, labels)
    handle.remove()

    sd = 0.5
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip = sd**2 / (s**2 + sd**2)
    c_out = s * sd / (s**2 + sd**2).sqrt()
    c_in = 1 / (s**2 + sd**2).sqrt()
    torch.testing.assert_close(seen["x_in"], c_in * x)
    torch.testing.assert_close(seen["c_noise"], sigma.log() / 4)
    assert torch.equal(seen["labels"], labels)
    torch.testing.assert_close(out, c_skip * x + c_out * seen["F"])


def test_sigma_shapes_agree():
    net = tiny().eval()
    x, _ = batch(2, 3, 32)
    with torch.no_grad():
        reference = net(x, torch.full((2,), 0.7))
        for sigma in (torch.full((2, 1, 1, 1), 0.7), torch.tensor(0.7), 0.7):
            assert torch.equal(net(x, sigma), reference)


def test_fresh_network_is_close_to_the_skip_path():
    """EDM's init zeroes (1e-5) each branch's last layer, so an untrained D(x) is ~ c_skip x."""
    net = tiny().eval()
    x, sigma = batch(2, 3, 32)
    with torch.no_grad():
        assert raw_output(net, x, sigma).abs().max() < 1e-3
    assert net.model.out_conv.weight.abs().max() < 1e-5
    assert all(m.bias.abs().max() == 0 for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_zero_label_is_exactly_no_label():
    net = tiny().eval()
    x, sigma = batch(2, 3, 32)
    with torch.no_grad():
        assert torch.equal(net(x, sigma, torch.zeros(2, AUG_DIM)), net(x, sigma))
        assert torch.equal(net(x, sigma, torch.zeros(2, AUG_DIM)), net(x, sigma, None))


def test_nonzero_label_changes_the_output():
    net = wake(tiny()).eval()
    x, sigma = batch(2, 3, 32)
    label = torch.zeros(2, AUG_DIM)
    label[:, 0] = 1.0
    with torch.no_grad():
        assert not torch.equal(net(x, sigma, label), net(x, sigma))
        change = (raw_output(net, x, sigma, label) - raw_output(net, x, sigma)).abs().max()
        assert change > 1e-2 * raw_output(net, x, sigma).abs().max()


def test_label_of_the_wrong_width_is_refused():
    net = tiny()
    x, sigma = batch(2, 3, 32)
    with pytest.raises(ValueError, match="aug_labels"):
        net(x, sigma, torch.zeros(2, AUG_DIM + 1))


def test_resolution_must_halve_evenly():
    with pytest.raises(ValueError, match="divisible"):
        build_denoiser(12, 1, 0, **{**TINY, "channel_mult": [1, 2, 2, 2]})


def test_ddpmpp_cifar_parameter_count_matches_edm():
    with torch.device("meta"):
        net = build_denoiser(32, 3, 9, **MODEL_PRESETS["ddpmpp-cifar"])
    assert abs(count_parameters(net) - 55.73e6) / 55.73e6 < 0.005


def test_digits_benchmark_preset_is_about_one_million_parameters():
    with torch.device("meta"):
        net = build_denoiser(8, 1, 9, **MODEL_PRESETS["digits"])
    assert 0.9e6 < count_parameters(net) < 1.1e6


def test_gradient_reaches_every_parameter():
    net = tiny(dropout=0.1).train()
    x, sigma = batch(4, 3, 32)
    labels = torch.randn(4, AUG_DIM)
    loss = (net(x + sigma.reshape(-1, 1, 1, 1) * torch.randn_like(x), sigma, labels) - x).square().mean()
    loss.backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_eval_mode_is_deterministic_and_train_mode_drops_out():
    net = wake(tiny(dropout=0.5))
    x, sigma = batch(2, 3, 32)
    with torch.no_grad():
        net.eval()
        assert torch.equal(raw_output(net, x, sigma), raw_output(net, x, sigma))
        net.train()
        assert not torch.equal(raw_output(net, x, sigma), raw_output(net, x, sigma))


def test_dropout_drops_p_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = _dropout(x, 0.13, training=True)
    assert abs((y == 0).float().mean().item() - 0.13) < 0.002
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.87))
    assert _dropout(x, 0.13, training=False) is x


def test_autocast_keeps_the_skip_combination_in_float32():
    net = tiny().eval()
    x, sigma = batch(2, 3, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, sigma)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, net(x, sigma).detach(), atol=1e-2, rtol=0)


def test_resampling_matches_edm_fir_filter():
    """EDM resamples with a depthwise (transposed) convolution by the [1, 1] filter; we use pooling."""
    x = torch.randn(2, 4, 8, 8)
    f = torch.full((4, 1, 2, 2), 0.25)
    torch.testing.assert_close(_resample(x, "down"), F.conv2d(x, f, stride=2, groups=4))
    assert torch.equal(_resample(x, "up"), F.conv_transpose2d(x, 4 * f, stride=2, groups=4))


def test_attention_matches_edm_formula():
    torch.manual_seed(0)
    block = SongUNet(8, 1, 1, model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[8]).enc["8x8_block0"]
    h = torch.randn(2, 16, 8, 8)
    q, k, v = block.qkv(h).reshape(2, 16, 3, 64).unbind(2)
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(16)).softmax(dim=2)
    expected = torch.einsum("nqk,nck->ncq", w, v).reshape(2, 16, 8, 8)
    torch.testing.assert_close(block._attend(h), expected)


def _edm_reference():
    """bench/edm_reference.py: EDM's reference ops, re-implemented for the side-by-side speed benchmark."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "edm_reference.py"
    spec = importlib.util.spec_from_file_location("edm_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("resolution, channels, arch", [
    (8, 1, MODEL_PRESETS["digits"]),  # the speed benchmark's config: down and up blocks
    (16, 3, {**TINY, "attn_resolutions": [8]}),  # self-attention in encoder, bottleneck and decoder
])
def test_same_function_and_gradients_as_edm_reference_ops(resolution, channels, arch):
    """Our layers (native pooling, SDPA, nn.Conv2d) compute EDM's DDPM++ denoiser exactly: same parameter names
    and shapes, same outputs and same parameter gradients for random (not zero-initialised) weights. This makes
    the benchmark a like-for-like comparison and pins our network to EDM's."""
    arch = {**arch, "dropout": 0.0}
    ours = build_denoiser(resolution, channels, AUG_DIM, **arch).train()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    reference = _edm_reference().EDMPrecond(resolution, channels, AUG_DIM, **arch).train()
    reference.load_state_dict(ours.state_dict())  # strict: identical names and shapes

    x, sigma = batch(3, channels, resolution)
    labels = torch.randn(3, AUG_DIM)
    outputs = []
    for net in (ours, reference):
        out = net(x, sigma, labels)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    reference_grads = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, reference_grads[name].grad, rtol=1e-3, atol=1e-5, msg=name)
