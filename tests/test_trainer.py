"""The worker loop in-process: data, learning, checkpoints, resume, and the command's error handling."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, TINY_TRIAL
from trainables.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainables.config import load_trial_config
from trainables.data import DatasetError, load_cifar10, load_digits, regime_indices, regime_size
from trainables.loop import _ema_beta, _update_ema, build_run, run_trial
from trainables.loss import AUG_DIM, ScoreAugLoss, build_trial_denoiser, edm_weight
from trainables.metrics import beside_nearest
from trainables.networks import build_denoiser
from trainables.session import LocalSession


def test_digits_split_is_fixed_and_disjoint():
    a, b = load_digits(), load_digits()
    assert torch.equal(a.train, b.train) and a.train.shape == (1438, 1, 8, 8) and a.test.shape == (359, 1, 8, 8)
    train_rows = {bytes(x.numpy()) for x in a.train}
    assert sum(bytes(x.numpy()) in train_rows for x in a.test) < 20  # sklearn digits hold a few exact duplicates


def test_regimes_are_nested():
    small, medium, full = (set(regime_indices(1438, regime_size(1438, f), seed=0).tolist()) for f in (0.05, 0.25, 1.0))
    assert small < medium < full and len(full) == 1438 and len(small) == round(1438 * 0.05)


def test_missing_cifar_says_what_to_download(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        load_cifar10(str(tmp_path / "nowhere"))


def test_loss_decreases_on_a_tiny_problem():
    torch.manual_seed(0)
    config = load_trial_config(None, TINY_TRIAL + ["score_augment.p=0.5", "score_augment.transforms=[hflip,rot90]"])
    images = load_digits().train[:64].float() / 127.5 - 1
    net = build_trial_denoiser(config, 8, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    loss_fn = ScoreAugLoss.from_configs(config.score_augment, config.clean_augment, config.diffusion)

    def fixed_loss():
        return loss_fn(net, images, torch.Generator().manual_seed(123)).mean().item()

    before = fixed_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss = loss_fn(net, images, g).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fixed_loss() < 0.7 * before


@pytest.mark.parametrize("nimg, batch, beta", [
    (1_000, 64, 0.41179551),  # ramp-up: half-life 0.05 x 1000 = 50 images
    (100_000, 64, 0.99116696),  # ramp-up: half-life 5000 images
    (20_000_000, 512, 0.99929047),  # capped: half-life 500 kimg, not 0.05 x 20M = 1000 kimg
])
def test_ema_follows_edm_rule_by_default(nimg, batch, beta):
    assert _ema_beta(load_trial_config(None, []), nimg, batch) == pytest.approx(beta, rel=1e-7)


def test_ema_without_rampup_uses_the_plain_half_life():
    config = load_trial_config(None, ["train.ema_halflife_kimg=0.5", "train.ema_rampup_ratio=null"])
    assert _ema_beta(config, 1_000, 64) == pytest.approx(0.91509917, rel=1e-7)  # 0.5 ** (64 / 500)
    assert _ema_beta(config, 64, 64) == _ema_beta(config, 10**9, 64)


def test_ema_update_moves_parameters_and_copies_buffers():
    ema, net = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        ema.weight.zero_(), net.weight.fill_(1.0), net.running_mean.fill_(2.0)
    _update_ema(ema, net, beta=0.25)
    assert torch.allclose(ema.weight, torch.full((3,), 0.75)) and torch.equal(ema.running_mean, net.running_mean)


def test_samples_found_in_the_training_set_pair_with_themselves():
    training = load_digits().train[:40]
    samples = training[torch.randperm(40, generator=torch.Generator().manual_seed(0))[:16]]
    pairs = beside_nearest(samples, training)
    assert pairs.shape == (16, 1, 8, 16) and torch.equal(pairs[..., :8], pairs[..., 8:])


def test_checkpoint_round_trip_restores_identical_outputs(tmp_path):
    config = load_trial_config(None, TINY_TRIAL)
    net = build_denoiser(8, 1, AUG_DIM, **config.resolved_model()).eval()
    save_checkpoint({"net": net.state_dict(), "ema": net.state_dict(), "optimizer": {}, "nimg": 5, "config": "{}"}, tmp_path)
    other = build_denoiser(8, 1, AUG_DIM, **{**config.resolved_model(), "dropout": 0.0}).eval()
    other.load_state_dict(load_checkpoint(tmp_path)["net"])
    x, sigma = torch.randn(4, 1, 8, 8), torch.full((4,), 0.7)
    assert torch.equal(net(x, sigma, None), other(x, sigma, None))


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path)


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_resume_continues_the_kimg_axis_exactly(tmp_path):
    """A trial stopped at an eval point and resumed equals the uninterrupted trial bit for bit, with sample metrics
    at every point too; and evaluating them does not change training (the eval leaves the random state alone)."""
    losses = {}
    for fid_at in ("final", "every"):
        sets = TINY_TRIAL + ["eval.fid=true", f"eval.fid_at={fid_at}", "score_augment.p=0.5"]
        config = load_trial_config(None, sets)
        straight = tmp_path / f"straight-{fid_at}"
        run_trial(config, LocalSession(straight), log=lambda _: None)
        interrupted = tmp_path / f"interrupted-{fid_at}"
        run_trial(load_trial_config(None, sets + ["train.total_kimg=0.128"]), LocalSession(interrupted), log=lambda _: None)
        run_trial(config, LocalSession(interrupted), log=lambda _: None)

        a, b = _metrics(straight), _metrics(interrupted)
        assert [m["kimg"] for m in b] == [m["kimg"] for m in a] == [0.128, 0.256]
        # bit for bit: every random stream (batches, noise and transforms, dropout) continues where it stopped
        assert {k: b[-1][k] for k in ("train_loss", "test_loss", "fid")} == {k: a[-1][k] for k in ("train_loss", "test_loss", "fid")}
        assert (interrupted / "samples").is_dir() and any((interrupted / "samples").iterdir())
        losses[fid_at] = (a[-1]["train_loss"], a[-1]["test_loss"])
    assert losses["final"] == losses["every"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "trainables.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--set", "model.dropotu=0.1"], "model.dropotu: unknown key; allowed here:"),
    (["--set", "train.batch_size=many"], "train.batch_size: Input should be a valid integer"),
    (["--set", "score_augment.p=1.5"], "score_augment.p: Input should be less than or equal to 1"),
    (["--set", "dataset=imagenet"], "dataset: Input should be 'digits', 'mnist5k', 'cifar10', 'image_folder' or 'synthetic'"),
    (["--set", "dataset=cifar10", "--set", "data_path=/nonexistent/cifar"], "Download https://www.cs.toronto.edu"),
])
def test_cli_rejects_bad_input_in_one_line(tmp_path, args, message):
    result = _cli(*args, "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_trains_and_resumes(tmp_path):
    out = tmp_path / "run"
    assert _cli(*sum((["--set", s] for s in TINY_TRIAL), []), "--set", "train.total_kimg=0.128", "--output", str(out)).returncode == 0
    result = _cli(*sum((["--set", s] for s in TINY_TRIAL), []), "--output", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout
    assert [m["kimg"] for m in _metrics(out)] == [0.128, 0.256]
    assert {"train_loss", "test_loss", "loss_gap", "img_per_sec", "memorization"} <= set(_metrics(out)[-1])


@pytest.mark.parametrize("sigma_data", [0.5, 0.8])
def test_sigma_data_reaches_the_preconditioner(tmp_path, sigma_data):
    """diffusion.sigma_data sets the trial network's c_skip/c_out/c_in, not only the loss weight: with the raw
    network's output zeroed, D(x; sigma) = c_skip x, and lambda(sigma) c_out^2 = 1 holds for the trained pair."""
    config = load_trial_config(None, TINY_TRIAL + [f"diffusion.sigma_data={sigma_data}"])
    net = build_run(config, LocalSession(tmp_path)).trainer.net
    assert net.sigma_data == sigma_data
    with torch.no_grad():
        net.model.out_conv.weight.zero_()
        net.model.out_conv.bias.zero_()
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor(1.3)
    assert torch.allclose(net(x, sigma), x * sigma_data**2 / (sigma**2 + sigma_data**2))
    c_out = sigma * net.sigma_data / (sigma**2 + net.sigma_data**2).sqrt()
    assert torch.isclose(edm_weight(sigma, config.diffusion.sigma_data) * c_out**2, torch.tensor(1.0))
