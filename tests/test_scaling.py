"""Scaling statistics on hand-made curves with known answers, and bootstrap intervals that cover the truth."""

import json
import math

import numpy as np
import pytest

from study.report.scaling import scaling_markdown
from study.stats.scaling import (Estimate, bootstrap, crossing_size, curve_statistics, mean_crossing, onset_fit, onset_kimg,
                                 scaling_summary)


def logistic(n, n50, steepness=3.0):
    """Memorization falling with N, 0.5 at n50: the shape Gu et al. measure against training-set size."""
    return 1 / (1 + np.exp(steepness * (np.log(n) - np.log(n50))))


def test_onset_interpolates_between_eval_points():
    assert onset_kimg([10, 20, 30], [0.0, 0.05, 0.15], threshold=0.1) == pytest.approx(25.0)


def test_onset_before_first_eval_point_interpolates_from_zero():
    assert onset_kimg([10, 20], [0.4, 0.8], threshold=0.1) == pytest.approx(2.5)


def test_onset_never_reached_is_censored():
    assert onset_kimg([10, 20], [0.01, 0.05], threshold=0.1) is None
    stats = curve_statistics([{"kimg": 10, "memorization": 0.01}, {"kimg": 20, "memorization": 0.05}])
    assert stats["memorization_onset_kimg"] is None and stats["memorization_onset_censored"] is True


def test_onset_skips_missing_values():
    assert onset_kimg([10, 20, 30, 40], [0.05, math.nan, None, 0.15], threshold=0.1) == pytest.approx(25.0)


def test_curve_statistics_on_a_hand_history():
    history = [
        {"kimg": 30, "memorization": 0.25, "fid": 20.0, "fid_test": 42.0, "test_loss": 0.45},
        {"kimg": 10, "memorization": 0.0, "fid": 50.0, "fid_test": 55.0, "test_loss": 0.5},
        {"kimg": 40, "memorization": math.nan, "fid": 25.0, "fid_test": None, "test_loss": 0.6},
        {"kimg": 20, "memorization": 0.05, "fid": 30.0, "fid_test": 40.0, "test_loss": 0.4},
    ]
    assert curve_statistics(history) == {
        "memorization_max": 0.25, "memorization_onset_kimg": pytest.approx(22.5), "memorization_onset_censored": False,
        "best_fid": 20.0, "best_fid_kimg": 30.0, "best_fid_test": 40.0, "best_fid_test_kimg": 20.0,
        "test_loss_min": 0.4, "test_loss_min_kimg": 20.0,
        "uncopied_fid": 30.0, "uncopied_fid_test": 40.0,  # the best among the points copying under 0.1: 10 and 20 kimg
    }


def test_curve_statistics_without_memorization_is_not_censored():
    stats = curve_statistics([{"kimg": 10, "fid": 30.0}])
    assert stats["memorization_max"] is None and stats["memorization_onset_censored"] is None
    assert stats["best_fid"] == 30.0 and stats["test_loss_min"] is None and stats["test_loss_min_kimg"] is None


def test_crossing_is_interpolated_in_log_size():
    assert crossing_size([16, 64], [1.0, 0.0], 0.5) == (pytest.approx(32.0), None)
    assert crossing_size([64, 16], [0.0, 1.0], 0.5) == (pytest.approx(32.0), None)


def test_crossing_outside_the_size_range_is_a_bound():
    assert crossing_size([16, 32, 64], [0.4, 0.2, 0.0], 0.5) == (None, "below")
    assert crossing_size([16, 32, 64], [0.9, 0.7, 0.5], 0.5) == (None, "above")


def test_non_monotone_curve_takes_first_downward_crossing():
    n, bound = crossing_size([16, 32, 64, 128], [1.0, 0.4, 0.6, 0.0], 0.5)
    assert bound is None and n == pytest.approx(16 * 2 ** (5 / 6))


def test_emm_is_the_crossing_at_ninety_percent():
    # Mean over seeds: 1.0, 0.95, 0.5 at 8, 16, 32 images: 90% is passed 1/9 of the way (in log N) from 16 to 32.
    groups = {8: [1.0, 1.0], 16: [0.9, 1.0], 32: [0.4, 0.6]}
    emm, bound = mean_crossing(groups, 0.9)
    assert bound is None and emm == pytest.approx(16 * 2 ** (1 / 9))


def test_onset_fit_recovers_a_line_and_leaves_censored_out():
    points = [(16, 5 + 2 * 16), (32, 5 + 2 * 32), (64, 5 + 2 * 64), (64, 5 + 2 * 64), (128, None), (16, math.nan)]
    fit = onset_fit(points)
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(5.0)
    assert fit["points"] == 4 and fit["censored"] == 2


def test_onset_fit_needs_two_sizes():
    assert onset_fit([(16, 10.0), (16, 12.0), (32, None)]) == {"slope": None, "intercept": None, "points": 2, "censored": 1}


def _rows(arm, n50, sizes, seeds, noise, rng, capacity=""):
    return [{"arm": arm, "capacity": capacity, "images": n, "seed": s,
             "memorization_max": float(np.clip(logistic(n, n50) + rng.normal(0, noise), 0, 1)),
             "memorization_onset_kimg": None, "loss_gap": None, "best_fid_test": None, "fid_test": None}
            for n in sizes for s in range(seeds)]


def test_data_multiplier_recovers_a_shift_in_size():
    rng = np.random.default_rng(0)
    sizes = [16 * 2 ** i for i in range(8)]
    rows = _rows("baseline", 200.0, sizes, 5, 0.03, rng) + _rows("scoreaug_p0.5", 50.0, sizes, 5, 0.03, rng)
    (multiplier,) = scaling_summary(rows, n_boot=200)["multipliers"]
    assert multiplier["arm"] == "scoreaug_p0.5" and multiplier["reference"] == "baseline"
    assert multiplier["data_multiplier"] == pytest.approx(4.0, rel=0.1)
    assert multiplier["low"] < multiplier["data_multiplier"] < multiplier["high"] and multiplier["lower_bound"] is None


def test_n50_interval_covers_the_true_crossing():
    # 5 seeds per size, as a study runs. A percentile interval from n seeds is about sqrt((n-1)/n) too narrow,
    # so its real coverage at n = 5 is P(|t_4| < 1.75) ~ 0.85; the test asks for 0.8 and rejects a uselessly wide interval.
    sizes = [16 * 2 ** i for i in range(6)]
    true_n50 = math.sqrt(64 * 128)  # midway in log N between two sizes, where log-linear interpolation is unbiased
    covered = 0
    for repetition in range(200):
        rng = np.random.default_rng(repetition)
        groups = {n: np.clip(logistic(n, true_n50) + rng.normal(0, 0.05, 5), 0, 1) for n in sizes}
        estimate = bootstrap(groups, lambda g: mean_crossing(g, 0.5)[0], n_boot=200, seed=repetition)
        covered += estimate.low <= true_n50 <= estimate.high
    assert 0.8 <= covered / 200 <= 0.99


def test_bootstrap_is_reproducible_with_a_fixed_seed():
    rng = np.random.default_rng(1)
    groups = {n: list(logistic(n, 90.0) + rng.normal(0, 0.05, 5)) for n in (16, 32, 64, 128, 256)}
    statistic = lambda g: mean_crossing(g, 0.5)[0]  # noqa: E731
    first, again = bootstrap(groups, statistic, n_boot=200, seed=7), bootstrap(groups, statistic, n_boot=200, seed=7)
    assert first == again and isinstance(first, Estimate) and first.defined == 1.0
    assert bootstrap(groups, statistic, n_boot=200, seed=8) != first


def _row(arm, images, seed, memorization, onset, loss_gap=0.1, fid=None):
    return {"arm": arm, "capacity": "", "images": images, "seed": seed, "memorization_max": memorization,
            "memorization_onset_kimg": onset, "loss_gap": loss_gap, "best_fid_test": fid, "fid_test": fid}


@pytest.fixture(scope="module")
def summary():
    baseline = {16: ([0.9, 0.95, 1.0], [10.0, 20.0, 30.0]),
                32: ([0.6, 0.7, 0.8], [40.0, 60.0, None]),  # 2 of 3 reached: median defined
                64: ([0.1, 0.2, 0.3], [100.0, None, None])}  # 1 of 3 reached: median undefined
    scoreaug = {16: ([0.3, 0.4, 0.2], [50.0, None, None]), 32: ([0.1, 0.1, 0.1], [None] * 3), 64: ([0.0] * 3, [None] * 3)}
    rows = [_row(arm, n, s, m, o, loss_gap=0.1 * (s + 1), fid=10.0 + s)
            for arm, curves in (("baseline", baseline), ("scoreaug_p0.5", scoreaug))
            for n, (memorization, onsets) in curves.items() for s, (m, o) in enumerate(zip(memorization, onsets))]
    rows.append(_row("baseline", 64, 3, None, None, loss_gap=None))  # no memorization measured: not a censored onset
    return scaling_summary(rows, n_boot=200)


def test_summary_per_size_counts_and_censored_medians(summary):
    per_size = {(r["arm"], r["images"]): r for r in summary["per_size"]}
    assert [(r["arm"], r["images"]) for r in summary["per_size"]] == sorted(per_size)
    row = per_size["baseline", 32]
    assert row["seeds"] == 3 and row["onset_reached"] == 2 and row["onset_censored"] == 1
    assert row["onset_kimg_median"] == 60.0
    assert row["memorization_max_mean"] == pytest.approx(0.7)
    assert 0.6 - 1e-9 <= row["memorization_max_low"] < 0.7 < row["memorization_max_high"] <= 0.8 + 1e-9
    assert row["loss_gap_mean"] == pytest.approx(0.2) and row["loss_gap_std"] == pytest.approx(0.1)
    assert row["best_fid_test_mean"] == pytest.approx(11.0) and row["best_fid_test_std"] == pytest.approx(1.0)
    row = per_size["baseline", 64]
    assert row["seeds"] == 4 and row["onset_reached"] == 1 and row["onset_censored"] == 2
    assert row["onset_kimg_median"] is None


def test_summary_per_arm_crossings_and_onset_fit(summary):
    baseline, scoreaug = summary["per_arm"]
    assert (baseline["arm"], scoreaug["arm"]) == ("baseline", "scoreaug_p0.5")
    assert baseline["n50"] == pytest.approx(32 * 2 ** 0.4) and baseline["n50_bound"] is None
    assert baseline["n50_low"] <= baseline["n50"] <= baseline["n50_high"]
    assert baseline["emm"] == pytest.approx(16 * 2 ** 0.2)
    assert baseline["onset_points"] == 6 and baseline["onset_censored"] == 3
    assert onset_fit([(16, 10.0), (16, 20.0), (16, 30.0), (32, 40.0), (32, 60.0), (64, 100.0)])["slope"] == \
        pytest.approx(baseline["onset_slope"])
    assert baseline["onset_intercept_low"] <= baseline["onset_intercept"] <= baseline["onset_intercept_high"]
    assert scoreaug["n50"] is None and scoreaug["n50_bound"] == "below"
    assert scoreaug["onset_slope"] is None and scoreaug["onset_points"] == 1 and scoreaug["onset_censored"] == 8


def test_summary_multiplier_is_a_lower_bound_when_the_arm_never_memorizes_half(summary):
    (row,) = summary["multipliers"]
    assert row["arm"] == "scoreaug_p0.5" and row["reference"] == "baseline" and row["capacity"] == ""
    assert row["data_multiplier"] is None and row["lower_bound"] == pytest.approx(32 * 2 ** 0.4 / 16)


def test_summary_holds_only_plain_values_and_renders(summary):
    for table in summary.values():
        for row in table:
            assert all(type(v) in (int, float, str, type(None)) for v in row.values()), row
    json.dumps(summary)
    markdown = scaling_markdown(summary)
    assert "| baseline |" in markdown and f">= {32 * 2 ** 0.4 / 16:.3g}" in markdown
    assert "below size range" in markdown and "percentile bootstrap" in markdown
    assert "| - | 64 | baseline | 4 |" in markdown and "not reached (1 of 3)" in markdown  # the per-size table
