"""On a CUDA GPU: the trainer, the sampler and FID, bf16 autocast and torch.compile. Skipped without CUDA;
`bench/gpu_check.sh` runs them (`pytest -m cuda`)."""

import math

import pytest
import torch

from tests.conftest import TINY_TRIAL
from trainables.config import DiffusionConfig, load_trial_config
from trainables.data import load_dataset
from trainables.fid import FidEvaluator
from trainables.loop import Trainer, TrainState, autocast_dtype, run_trial
from trainables.loss import AUG_DIM
from trainables.networks import MODEL_PRESETS, build_denoiser
from trainables.sampler import heun_sample, seeded_latents
from trainables.session import LocalSession

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def _net(preset: str = "digits-tiny", resolution: int = 8, channels: int = 1, **overrides):
    torch.manual_seed(0)
    return build_denoiser(resolution, channels, AUG_DIM, **{**MODEL_PRESETS[preset], **overrides})


def test_trainer_trains_on_cuda_and_reports_every_point(tmp_path):
    config = load_trial_config(None, TINY_TRIAL + ["runtime.device=cuda"])
    reports = run_trial(config, LocalSession(tmp_path, "cuda"), log=lambda _: None)
    assert [r["kimg"] for r in reports] == [0.128, 0.256]
    assert all(math.isfinite(r[key]) for r in reports for key in ("train_loss", "test_loss", "img_per_sec"))


def test_auto_precision_is_bf16_on_a_bf16_gpu():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert autocast_dtype("auto", CUDA) is expected
    assert autocast_dtype("fp32", CUDA) is None


def test_bf16_autocast_stays_close_to_fp32_and_returns_fp32():
    net = _net("mnist-small", 32, 3).to(CUDA).eval()
    g = torch.Generator(CUDA).manual_seed(0)
    x = torch.randn(8, 3, 32, 32, device=CUDA, generator=g)
    sigma = torch.full((8,), 0.5, device=CUDA)
    with torch.no_grad():
        reference = net(x, sigma)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(x, sigma)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, atol=2e-2, rtol=0)


def test_compiled_trainer_steps_and_matches_eager_network():
    overrides = ["model.preset=digits-tiny", "model.dropout=0", "train.batch_size=16", "runtime.compile=true"]
    config = load_trial_config(None, overrides + ["runtime.precision=fp32"])
    trainer = Trainer(config, _net(dropout=0.0), CUDA)
    pool = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, device=CUDA)
    generators = {"batch": torch.Generator().manual_seed(1), "loss": torch.Generator(CUDA).manual_seed(2)}
    state = TrainState()
    losses = [trainer.step(pool, generators, state).item() for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses) and state.step == 3
    x, sigma = torch.randn(4, 1, 8, 8, device=CUDA), torch.full((4,), 0.5, device=CUDA)
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(x, sigma), trainer.net(x, sigma), atol=1e-4, rtol=1e-4)


def test_bf16_compiled_trainer_steps():
    config = load_trial_config(None, ["model.preset=digits-tiny", "train.batch_size=16", "runtime.compile=true",
                                      "runtime.precision=bf16"])
    trainer = Trainer(config, _net(), CUDA)
    pool = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, device=CUDA)
    generators = {"batch": torch.Generator().manual_seed(1), "loss": torch.Generator(CUDA).manual_seed(2)}
    state = TrainState()
    assert all(math.isfinite(trainer.step(pool, generators, state).item()) for _ in range(3))


def test_sampler_on_cuda_matches_cpu():
    net = _net().eval()
    latents = seeded_latents(range(8), (1, 8, 8))
    on_cpu = heun_sample(net, latents, 6, DiffusionConfig())
    on_gpu = heun_sample(net.to(CUDA), latents.to(CUDA), 6, DiffusionConfig()).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-3, rtol=1e-3)


def test_fid_on_cuda_matches_cpu(tmp_path):
    digits = load_dataset("digits")
    samples = digits.test[:64]
    on_cpu = FidEvaluator(digits, "digits-cnn", 64, cache_dir=tmp_path / "cpu").evaluate(samples)
    on_gpu = FidEvaluator(digits, "digits-cnn", 64, cache_dir=tmp_path / "gpu", device=CUDA).evaluate(samples)
    for key in ("fid", "fid_test"):
        assert on_gpu[key] == pytest.approx(on_cpu[key], rel=1e-3, abs=1e-3)
