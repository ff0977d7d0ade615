"""The scaling report's figures are drawn from synthetic study results: valid PNGs, data visibly changes them, gaps do not crash."""

import math

import numpy as np
import pytest
from PIL import Image

from study.report.figures import curves_figure, nearest_figure, pareto_figure, scaling_figure

SIZES = (18, 72, 288)
KIMG = (5.0, 10.0, 20.0, 40.0, 80.0, 120.0)


def memorization(arm: str, images: int, kimg: float) -> float:
    """Rises with training time, later for larger N and later still under ScoreAug."""
    onset = images * (0.3 if arm == "baseline" else 1.0)
    return 1.0 / (1.0 + math.exp(-(kimg - onset) / 10.0))


def make_curves(arms=("baseline", "scoreaug"), capacities=("",), seeds=(0, 1)) -> list[dict]:
    curves = []
    for arm in arms:
        for capacity in capacities:
            for images in SIZES:
                for seed in seeds:
                    history = [{"kimg": kimg, "memorization": memorization(arm, images, kimg) * (1 - 0.05 * seed),
                                "fid_test": None if kimg < 20 else 40 - 0.1 * kimg + seed,
                                "train_loss": 0.3 / (1 + kimg / 40), "test_loss": 0.3 + 0.001 * kimg * 18 / images}
                               for kimg in KIMG]
                    curves.append({"arm": arm, "capacity": capacity, "images": images, "seed": seed, "history": history})
    return curves


def make_summary(capacities=("",)) -> dict:
    per_size, per_arm = [], []
    for arm, gain in (("baseline", 1.0), ("scoreaug", 3.0)):
        for capacity, scale in zip(capacities, (gain, 1.5 * gain)):
            for images in SIZES:
                level = 1.0 / (1.0 + (images / (40 * scale)) ** 2)
                censored = images == SIZES[-1]
                per_size.append({"arm": arm, "capacity": capacity, "images": images, "seeds": 2,
                                 "memorization_max_mean": level, "memorization_max_low": max(level - 0.05, 0.0),
                                 "memorization_max_high": min(level + 0.04, 1.0),
                                 "loss_gap_mean": 0.02 * 72 / images / scale, "loss_gap_std": 0.003,
                                 "best_fid_test_mean": 30 + 10 / scale, "best_fid_test_std": 1.5,
                                 "onset_reached": 0 if censored else 2, "onset_censored": 2 if censored else 0,
                                 "onset_kimg_median": None if censored else 0.3 * scale * images + 5})
            per_arm.append({"arm": arm, "capacity": capacity, "n50": 40 * scale, "n50_low": 32 * scale, "n50_high": 50 * scale,
                            "emm": 13 * scale, "emm_low": 11 * scale, "emm_high": 16 * scale,
                            "onset_slope": 0.3 * scale, "onset_intercept": 5.0})
    return {"per_size": per_size, "per_arm": per_arm}


def make_fronts() -> list[dict]:
    rng = np.random.default_rng(0)
    fronts = []
    for regime, images in (("small", 18), ("large", 288)):
        values = rng.uniform(0, 1, size=(12, 2))
        pareto = [not any((o <= v).all() and (o < v).any() for o in values) for v in values]
        trials = [{"values": list(v), "pareto": p, "feasible": i % 5 != 4, "role": "baseline" if i == 0 else "search"}
                  for i, (v, p) in enumerate(zip(values, pareto))]
        trials.append({"values": [None, 0.5], "pareto": False, "feasible": False, "role": "search"})
        fronts.append({"regime": regime, "images": images, "objectives": ["fid_test", "memorization"], "trials": trials})
    return fronts


def assert_pngs(paths, names):
    assert sorted(p.name for p in paths) == sorted(names)
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200


def test_curves_one_figure_per_capacity(tmp_path):
    assert_pngs(curves_figure(make_curves(), tmp_path), ["curves.png"])
    assert_pngs(curves_figure(make_curves(capacities=("4 ch", "16/ch")), tmp_path), ["curves_4-ch.png", "curves_16-ch.png"])


def test_curves_change_with_the_arms_drawn(tmp_path):
    (tmp_path / "one").mkdir()
    (one,) = curves_figure(make_curves(arms=("baseline",)), tmp_path / "one")
    (two,) = curves_figure(make_curves(), tmp_path)
    assert one.read_bytes() != two.read_bytes()


def test_curves_with_one_seed_and_missing_metrics(tmp_path):
    curves = make_curves(seeds=(0,))
    for entry in curves:
        for point in entry["history"]:
            point["test_loss"] = None
            point["fid_test"] = None
    assert_pngs(curves_figure(curves, tmp_path, threshold=0.2), ["curves.png"])


@pytest.mark.parametrize("capacities", [("",), ("small", "large")])
def test_scaling_figure(tmp_path, capacities):
    assert_pngs(scaling_figure(make_summary(capacities), tmp_path, fid_floor=12.0), ["scaling.png"])


def test_scaling_figure_changes_with_the_floor(tmp_path):
    (without,) = scaling_figure(make_summary(), tmp_path)
    plain = without.read_bytes()
    (floored,) = scaling_figure(make_summary(), tmp_path, fid_floor=12.0)
    assert floored.read_bytes() != plain


def test_scaling_figure_survives_undefined_values(tmp_path):
    summary = make_summary()
    for entry in summary["per_arm"]:
        entry.update(n50=None, n50_low=None, n50_high=None, emm_low=None, onset_slope=None)
    for entry in summary["per_size"]:
        entry.update(onset_kimg_median=None, best_fid_test_mean=None, memorization_max_low=None, loss_gap_std=None)
    assert_pngs(scaling_figure(summary, tmp_path), ["scaling.png"])


def test_pareto_figure(tmp_path):
    assert_pngs(pareto_figure(make_fronts(), tmp_path), ["pareto.png"])
    assert pareto_figure([], tmp_path) == []


def test_nearest_figure(tmp_path):
    pairs = {}
    for i, arm in enumerate(("baseline", "scoreaug")):
        pixels = np.random.default_rng(i).integers(0, 255, size=(64, 128, 3), dtype=np.uint8)
        pairs[arm] = tmp_path / f"{arm}_pairs.png"
        Image.fromarray(pixels).save(pairs[arm])
    pairs["gray"] = tmp_path / "gray_pairs.png"
    Image.fromarray(np.zeros((64, 128), dtype=np.uint8)).save(pairs["gray"])
    assert_pngs(nearest_figure(pairs, 72, tmp_path), ["nearest.png"])
    assert nearest_figure({}, 72, tmp_path) == []


def test_a_study_without_seeded_reruns_draws_no_scaling_figures(tmp_path):
    """trials_per_regime=1 confirms nothing: the report must still be written, without these two figures."""
    empty = {"per_size": [], "per_arm": [], "multipliers": []}
    assert scaling_figure(empty, tmp_path) == [] and curves_figure([], tmp_path) == []
