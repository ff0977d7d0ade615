"""What an adaptive design's report says, from trials of a known truth: ScoreAug's FID cost where nobody copies
(its size adjustment, and the coverage of its interval), and the capacity table with each width's two-sided
multiplier."""

import math

import numpy as np

from study.config import load_study_config
from study.report.cost import cost_markdown
from study.report.design import capacity_markdown, summarize_design
from study.stats.design_summary import DesignTrial, fid_cost

SIZE_SLOPE = -6.0  # best fid_test falls by 6 points per e-fold of training images
COST = 4.0  # the arm's true FID price


def _uncopied(rng, arm: str, sizes, noise: float = 1.0) -> list[DesignTrial]:
    fid = lambda n: 40.0 + SIZE_SLOPE * math.log(n) + (COST if arm == "scoreaug_fixed" else 0.0) + rng.normal(0, noise)
    return [DesignTrial(arm, n, 1, ((60.0, 0.0), (120.0, 0.0)), 120.0, 256, fid(n)) for n in sizes]


def test_the_fid_cost_adjusts_for_the_sizes_each_arm_was_placed_at():
    rng = np.random.default_rng(0)
    # The baseline's uncopied trials lie at larger sizes (above its larger N50), so they have the better FID:
    # raw means would call the arm's cost about 4 + 6 * log(4) = 12 points.
    trials = _uncopied(rng, "baseline", [150, 200, 300, 400]) + _uncopied(rng, "scoreaug_fixed", [40, 50, 75, 100])
    copied = DesignTrial("scoreaug_fixed", 20, 1, ((120.0, 0.6),), 120.0, 256, 5.0)  # copies: its FID must not count
    [estimate] = fid_cost(trials + [copied], "baseline")
    raw = np.mean([t.best_fid_test for t in trials if t.arm == "scoreaug_fixed"]) - np.mean(
        [t.best_fid_test for t in trials if t.arm == "baseline"])
    assert raw > 9 and estimate["fid_cost_low"] < COST < estimate["fid_cost_high"]
    assert (estimate["trials"], estimate["reference_trials"]) == (4, 4)


def test_the_fid_cost_interval_covers_at_its_nominal_rate():
    rng = np.random.default_rng(1)
    covered = []
    for _ in range(400):
        trials = _uncopied(rng, "baseline", [120, 160, 250]) + _uncopied(rng, "scoreaug_fixed", [40, 60, 90], noise=1.0)
        [estimate] = fid_cost(trials, "baseline")
        covered.append(estimate["fid_cost_low"] <= COST <= estimate["fid_cost_high"])
    assert 0.92 <= np.mean(covered) <= 0.98  # 95% nominal; 400 studies give a standard error of 0.011


def test_no_fid_cost_without_uncopied_trials_of_both_arms():
    rng = np.random.default_rng(2)
    assert fid_cost(_uncopied(rng, "scoreaug_fixed", [40, 60, 90]), "baseline") == []
    assert fid_cost(_uncopied(rng, "baseline", [100]) + _uncopied(rng, "scoreaug_fixed", [40]), "baseline") == []


def _design_trials(rng, n50: dict[str, float], slope: float = 4.0) -> list[DesignTrial]:
    """Trials at sizes around each arm's N50, three seeds each, with binomial copy counts over 256 samples."""
    trials = []
    for arm, center in n50.items():
        for images in np.unique(np.round(center * np.geomspace(0.4, 12.0, 8)).astype(int)):
            for _ in range(3):
                m = rng.binomial(256, 1 / (1 + (images / center) ** slope)) / 256
                fid = 30.0 - 3 * math.log(images) + (5.0 if arm != "baseline" else 0.0) + rng.normal(0, 0.5)
                trials.append(DesignTrial(arm, int(images), 1, ((60.0, m / 2), (120.0, m)), 120.0, 256, fid))
    return trials


def test_the_capacity_table_gives_each_width_its_two_sided_multiplier():
    rng = np.random.default_rng(3)
    config = load_study_config(None, ["design={min_images: 2}", "confirm.arms={scoreaug_fixed: {score_augment.p: 0.5}}",
                                      "trial.train.total_kimg=120"])
    truth = {"model_channels=8": (24.0, 8.0), "model_channels=32": (77.0, 32.0)}
    summaries = {capacity: summarize_design(config, _design_trials(rng, {"baseline": base, "scoreaug_fixed": aug}))
                 for capacity, (base, aug) in truth.items()}
    for capacity, (base, aug) in truth.items():
        [multiplier] = summaries[capacity]["final"]["multipliers"]
        assert multiplier["data_multiplier_bound"] is None
        assert multiplier["data_multiplier_low"] < base / aug < multiplier["data_multiplier_high"]
        [cost] = summaries[capacity]["fid_cost"]
        assert cost["fid_cost_low"] < 5.0 < cost["fid_cost_high"]
    table = capacity_markdown(summaries).splitlines()
    rows = [line for line in table if line.startswith("| model_channels=")]
    assert [row.split(" | ")[0] for row in rows] == ["| model_channels=8", "| model_channels=32"]
    assert all(row.count("[") == 4 for row in rows)  # N50 baseline, N50 arm, multiplier, FID cost: each an interval


def test_the_cost_table_sums_each_phase_and_spans_first_start_to_last_end():
    rows = [{"phase": "search", "kimg": 120.0, "wall_time_s": 120.0, "trial_started_at": 1000.0},
            {"phase": "design", "kimg": 60.0, "wall_time_s": 60.0, "trial_started_at": 1100.0},
            {"phase": "design", "kimg": 120.0, "wall_time_s": 150.0, "trial_started_at": 1200.0},
            {"phase": "design", "kimg": None, "wall_time_s": 3.0, "trial_started_at": 1400.0}]  # failed before an eval
    lines = cost_markdown(rows).splitlines()
    assert "| search | 1 | 120 | 2.0 |" in lines and "| design | 3 | 180 | 3.5 |" in lines
    assert "| all | 4 | 300 | 5.5 |" in lines
    assert any(line.startswith("From the first trial's start to the last trial's end: 6.7 min") for line in lines)
    assert cost_markdown([]) == ""


def test_the_capacity_figure_is_drawn_for_a_numeric_axis_only(tmp_path):
    from study.report.figures import capacity_figure

    rng = np.random.default_rng(4)
    config = load_study_config(None, ["design={min_images: 2}", "confirm.arms={scoreaug_fixed: {score_augment.p: 0.5}}"])
    summary = summarize_design(config, _design_trials(rng, {"baseline": 24.0, "scoreaug_fixed": 8.0}))
    [path] = capacity_figure({"model_channels=8": summary, "model_channels=16": summary}, tmp_path)
    assert path.name == "capacity.png" and path.stat().st_size > 10_000
    assert capacity_figure({"model.preset=a": summary, "model.preset=b": summary}, tmp_path / "none") == []


def test_the_grid_check_rebuilds_the_published_means_and_spreads():
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("grid_model_check", ROOT / "docs" / "grid_model_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    observations = check.grid_observations()
    for arm, sizes in check.PUBLISHED_GRID.items():
        for images, (mean, sd) in sizes.items():
            values = [o.memorization for o in observations if (o.arm, o.images) == (arm, images)]
            assert abs(np.mean(values) - mean) <= 1 / 256 and abs(np.std(values, ddof=1) - sd) <= 2 / 256


def _estimates_at(rng, factor: float, widths=(8, 16, 32, 64), se: float = 0.05):
    """Independent log-normal multiplier estimates that change by `factor` per doubling, each with its 95% interval."""
    points = []
    for width in widths:
        log_value = math.log(2.3) + math.log(factor) * math.log2(width / 8) + rng.normal(0, se)
        points.append((width, math.exp(log_value), math.exp(log_value - 1.96 * se), math.exp(log_value + 1.96 * se)))
    return points


def test_the_trend_per_doubling_recovers_a_known_factor_and_covers():
    from study.stats.design_summary import trend_per_doubling

    rng = np.random.default_rng(5)
    trend = trend_per_doubling(_estimates_at(rng, 1.25, se=0.001))
    assert abs(trend["factor_per_doubling"] - 1.25) < 0.005 and trend["low"] < 1.25 < trend["high"]
    covered = []
    for _ in range(1000):
        trend = trend_per_doubling(_estimates_at(rng, 1.0, widths=(8, 16, 32)))
        covered.append(trend["low"] <= 1.0 <= trend["high"])
    # 95% nominal; the dispersion floor of 1 makes it conservative (standard error of the rate: 0.007)
    assert 0.94 <= np.mean(covered) <= 0.995
    assert trend_per_doubling([(8, 2.0, 1.8, 2.2), (16, 2.1, None, None), (32, 2.2, 2.0, 2.4)]) is None


def test_the_capacity_table_says_how_the_multiplier_changes_per_doubling():
    rng = np.random.default_rng(6)
    config = load_study_config(None, ["design={min_images: 2}", "confirm.arms={scoreaug_fixed: {score_augment.p: 0.5}}"])
    truth = {"model_channels=8": (24.0, 10.0), "model_channels=16": (48.0, 20.0), "model_channels=32": (96.0, 40.0)}
    summaries = {capacity: summarize_design(config, _design_trials(rng, {"baseline": base, "scoreaug_fixed": aug}))
                 for capacity, (base, aug) in truth.items()}
    lines = capacity_markdown(summaries).splitlines()
    [line] = [line for line in lines if line.startswith("- Data multiplier of scoreaug_fixed per doubling of model_channels")]
    low, high = (float(v) for v in line.split("[")[1].rstrip("]").split(", "))
    assert low < 1.0 < high  # the truth: the same multiplier, 2.4, at every width
    assert any(line.startswith("- N50 of baseline per doubling of model_channels: x") for line in lines)


def test_an_arm_whose_every_trial_failed_is_named_in_the_headline_with_its_reason():
    from study.phases.suggestion import Suggestion
    from study.report.design import failed_arms, failed_arm_line
    from study.report.headline import design_headline

    def record(role: str, status: str, reason: str = "") -> dict:
        suggestion = Suggestion(cell=f"n{20}", regime_fraction=None, images=20, role=role)
        return {"phase": "design", "suggestion": suggestion.to_tune(), "status": status, "reason": reason}

    records = [record("baseline", "completed"), record("broken", "diverged", "loss is nan at kimg 0.1"),
               record("broken", "diverged", "loss is nan at kimg 0.1"), record("scoreaug_fixed", "failed", "x"),
               record("scoreaug_fixed", "completed")]
    [entry] = failed_arms(records, "")
    assert entry == {"arm": "broken", "trials": 2, "reason": "diverged: loss is nan at kimg 0.1"}
    summary = {"final": None, "cost": {}, "failed_arms": [entry]}
    assert design_headline({"": summary}) == [failed_arm_line(entry)]
    assert failed_arm_line(entry).startswith("broken: no N50: all 2 of its trials failed (diverged: loss is nan")
