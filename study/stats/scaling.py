"""Where memorization starts as the training set grows, and how far ScoreAug moves it.

Per trial: the memorization curve over training time gives its maximum (Gu et al. 2023 report the maximum
over snapshots) and its onset kimg (Bonnaire et al. / Favero et al. 2025: onset grows about linearly in N).
Per arm: memorization falls with the training-set size N; N50 and EMM are the sizes where the per-size mean
over seeds crosses 50% and 90%, and the data multiplier is the reference arm's N50 over the arm's N50.
Every interval is a percentile bootstrap over training seeds, resampled within each size with a fixed seed,
so a report reproduces exactly. A censored onset (never reached) is a count, never a number in a mean or fit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from study.stats.seeds import mean_and_spread

Groups = dict[float, Sequence[float]]  # training-set size -> one value per seed


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def onset_kimg(kimg: Sequence[float], values: Sequence[float], threshold: float = 0.1) -> float | None:
    """First kimg at which `values` reaches `threshold`, interpolated linearly; None when censored.

    The curve starts at (0, 0): an untrained network copies nothing, so a first eval point already above the
    threshold still gives an onset earlier than that point rather than the point itself.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive (memorization is 0 at kimg 0), got {threshold}")
    previous_kimg, previous_value = 0.0, 0.0
    for k, value in zip(kimg, values):
        if not _finite(value):
            continue
        if value >= threshold:
            return float(previous_kimg + (threshold - previous_value) * (k - previous_kimg) / (value - previous_value))
        previous_kimg, previous_value = k, value
    return None


def _extreme(history: list[dict], key: str, pick=min) -> tuple[float | None, float | None]:
    """(value, kimg) of the smallest (or largest) finite `key` in the history; the earliest kimg on ties."""
    points = [(point[key], point["kimg"]) for point in history if _finite(point.get(key))]
    if not points:
        return None, None
    value = pick(value for value, _ in points)
    return float(value), float(next(k for v, k in points if v == value))


def curve_statistics(history: list[dict], threshold: float = 0.1) -> dict:
    """One trial's summary of its eval points: memorization maximum and onset, best FIDs, lowest test loss, and the
    best FIDs among the points that copy less than `threshold` (quality compared without rewarding copies)."""
    history = sorted(history, key=lambda point: point["kimg"])
    uncopied = [point for point in history if _finite(point.get("memorization")) and point["memorization"] < threshold]
    memorization = [(point["kimg"], point["memorization"]) for point in history if _finite(point.get("memorization"))]
    onset = onset_kimg(*zip(*memorization), threshold=threshold) if memorization else None
    best_fid, best_fid_kimg = _extreme(history, "fid")
    best_fid_test, best_fid_test_kimg = _extreme(history, "fid_test")
    test_loss_min, test_loss_min_kimg = _extreme(history, "test_loss")
    return {
        "memorization_max": _extreme(history, "memorization", max)[0],
        "memorization_onset_kimg": onset,
        "memorization_onset_censored": (onset is None) if memorization else None,
        "best_fid": best_fid, "best_fid_kimg": best_fid_kimg,
        "best_fid_test": best_fid_test, "best_fid_test_kimg": best_fid_test_kimg,
        "test_loss_min": test_loss_min, "test_loss_min_kimg": test_loss_min_kimg,
        "uncopied_fid": _extreme(uncopied, "fid")[0], "uncopied_fid_test": _extreme(uncopied, "fid_test")[0],
    }


def crossing_size(sizes: Sequence[float], values: Sequence[float], level: float) -> tuple[float | None, str | None]:
    """Size at which a curve falling with N first drops below `level`, interpolated linearly in log N.

    Returns (N, None), or (None, "below") when the crossing lies under the smallest size (every value is
    below), or (None, "above") when it lies over the largest (the curve ends at or above `level`).
    Noisy non-monotone curves take the first downward crossing from the small-N side.
    """
    if len(sizes) == 0:
        return None, None
    order = np.argsort(sizes, kind="stable")
    log_n, v = np.log(np.asarray(sizes, float)[order]), np.asarray(values, float)[order]
    for i in range(len(v) - 1):
        if v[i] >= level > v[i + 1]:
            t = (v[i] - level) / (v[i] - v[i + 1])
            return float(math.exp(log_n[i] + t * (log_n[i + 1] - log_n[i]))), None
    return None, "above" if v[-1] >= level else "below"


def mean_crossing(groups: Groups, level: float) -> tuple[float | None, str | None]:
    """crossing_size of the per-size mean over seeds (N50 at level 0.5, EMM at 0.9)."""
    sizes = sorted(groups)
    return crossing_size(sizes, [float(np.mean(groups[n])) for n in sizes], level)


@dataclass(frozen=True)
class Estimate:
    value: float | None  # the point estimate from all seeds
    low: float | None  # percentile bootstrap interval
    high: float | None
    defined: float  # fraction of bootstrap replicates where the statistic was defined
    bound: str | None = None  # "below"/"above" when the point estimate is censored at the size range


def _resampled(samples: Sequence[Groups], statistic: Callable, n_boot: int, seed: int, confidence: float) -> Estimate:
    """Percentile bootstrap of statistic(*samples), resampling seeds with replacement within every size."""
    rng = np.random.default_rng(seed)
    arrays = [{n: np.asarray(values, float) for n, values in sorted(groups.items())} for groups in samples]
    draws = [{n: values[rng.integers(0, len(values), size=(n_boot, len(values)))] for n, values in groups.items()}
             for groups in arrays]
    replicates = [statistic(*({n: d[b] for n, d in groups.items()} for groups in draws)) for b in range(n_boot)]
    defined = np.array([r for r in replicates if _finite(r)], float)
    point = statistic(*arrays)
    tail = 100 * (1 - confidence) / 2
    low, high = (float(p) for p in np.percentile(defined, [tail, 100 - tail])) if len(defined) else (None, None)
    return Estimate(float(point) if _finite(point) else None, low, high, len(defined) / n_boot)


def bootstrap(groups: Groups, statistic: Callable[[Groups], float | None], n_boot: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> Estimate:
    """Point estimate and percentile interval of statistic(groups) over seeds resampled within each size."""
    return _resampled([groups], statistic, n_boot, seed, confidence)


def bootstrap_pair(groups_a: Groups, groups_b: Groups, statistic: Callable[[Groups, Groups], float | None],
                   n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> Estimate:
    """bootstrap of statistic(groups_a, groups_b), the two arms resampled independently (their seeds are unrelated)."""
    return _resampled([groups_a, groups_b], statistic, n_boot, seed, confidence)


def onset_fit(points: Sequence[tuple[float, float | None]]) -> dict:
    """Least-squares onset_kimg = intercept + slope * N over uncensored per-seed points.

    Censored onsets (None or NaN) are counted, never fitted: replacing them by the budget would bend the line.
    """
    used = [(n, onset) for n, onset in points if _finite(onset)]
    fit = {"slope": None, "intercept": None, "points": len(used), "censored": len(points) - len(used)}
    if len({n for n, _ in used}) >= 2:
        slope, intercept = np.polyfit(*np.asarray(used, float).T, deg=1)
        fit.update(slope=float(slope), intercept=float(intercept))
    return fit


def _groups(rows: list[dict], key: str, censored_as_nan: bool = False) -> dict[float, list[float]]:
    """Per-size values of `key` over seeds; a None onset is kept as NaN (censored) where asked, else dropped."""
    groups = defaultdict(list)
    for row in rows:
        if _finite(row.get(key)):
            groups[row["images"]].append(float(row[key]))
        elif censored_as_nan:
            groups[row["images"]].append(math.nan)
    return dict(groups)


def _onset_median(onsets: list[float]) -> float | None:
    """Median onset with censored (NaN) as +inf: defined only when more than half the seeds reached it."""
    reached = [o for o in onsets if math.isfinite(o)]
    return float(np.median([o if math.isfinite(o) else math.inf for o in onsets])) if len(reached) > len(onsets) / 2 else None


def _per_size(arm: str, capacity: str, images: int, rows: list[dict], n_boot: int, seed: int) -> dict:
    measured = [r for r in rows if _finite(r.get("memorization_max"))]
    memorization = bootstrap({images: [r["memorization_max"] for r in measured]}, lambda g: float(np.mean(g[images])),
                             n_boot, seed) if measured else Estimate(None, None, None, 0.0)
    onsets = [float(r["memorization_onset_kimg"]) if _finite(r.get("memorization_onset_kimg")) else math.nan
              for r in measured]
    loss_gap_mean, loss_gap_std = mean_and_spread([float(r["loss_gap"]) for r in rows if _finite(r.get("loss_gap"))])
    fid_mean, fid_std = mean_and_spread([float(r["best_fid_test"]) for r in rows if _finite(r.get("best_fid_test"))])
    uncopied = [float(r["uncopied_fid_test"]) for r in rows if _finite(r.get("uncopied_fid_test"))]
    uncopied_mean, uncopied_std = mean_and_spread(uncopied)
    reached = sum(math.isfinite(o) for o in onsets)
    return {
        "arm": arm, "capacity": capacity, "images": int(images), "seeds": len(rows),
        "memorization_max_mean": memorization.value,
        "memorization_max_low": memorization.low, "memorization_max_high": memorization.high,
        "loss_gap_mean": loss_gap_mean, "loss_gap_std": loss_gap_std,
        "best_fid_test_mean": fid_mean, "best_fid_test_std": fid_std,
        "uncopied_fid_test_mean": uncopied_mean, "uncopied_fid_test_std": uncopied_std, "uncopied_seeds": len(uncopied),
        "onset_reached": reached, "onset_censored": len(onsets) - reached,
        "onset_kimg_median": _onset_median(onsets),
    }


def _crossing_estimate(groups: Groups, level: float, n_boot: int, seed: int) -> Estimate:
    estimate = bootstrap(groups, lambda g: mean_crossing(g, level)[0], n_boot, seed)
    return replace(estimate, bound=mean_crossing(groups, level)[1])


def _per_arm(arm: str, capacity: str, rows: list[dict], n_boot: int, seed: int) -> tuple[dict, dict[float, list[float]]]:
    """The arm's N50, EMM and onset fit, with the per-size memorization groups they came from."""
    memorization = _groups(rows, "memorization_max")
    onsets = _groups([r for r in rows if _finite(r.get("memorization_max"))], "memorization_onset_kimg", True)
    n50, emm = (_crossing_estimate(memorization, level, n_boot, seed) for level in (0.5, 0.9))
    fit = onset_fit([(n, o) for n, values in onsets.items() for o in values])
    slope, intercept = (bootstrap(onsets, lambda g, key=key: onset_fit([(n, o) for n, values in g.items() for o in values])[key],
                                  n_boot, seed) for key in ("slope", "intercept"))
    row = {"arm": arm, "capacity": capacity}
    for name, estimate in (("n50", n50), ("emm", emm)):
        row.update({name: estimate.value, f"{name}_low": estimate.low, f"{name}_high": estimate.high,
                    f"{name}_defined": estimate.defined, f"{name}_bound": estimate.bound})
    row.update(onset_slope=fit["slope"], onset_slope_low=slope.low, onset_slope_high=slope.high,
               onset_intercept=fit["intercept"], onset_intercept_low=intercept.low, onset_intercept_high=intercept.high,
               onset_points=fit["points"], onset_censored=fit["censored"])
    return row, memorization


def _multiplier(reference: Groups, groups: Groups, n_boot: int, seed: int) -> dict:
    """Reference N50 / arm N50. When one N50 lies outside the sizes trained on, the ratio is only bounded from below:
    the arm below 50% at every size (its N50 under the smallest), or the reference above 50% at every size."""
    def ratio(ref, arm):
        ref_n50, arm_n50 = mean_crossing(ref, 0.5)[0], mean_crossing(arm, 0.5)[0]
        return None if ref_n50 is None or arm_n50 is None else ref_n50 / arm_n50

    estimate = bootstrap_pair(reference, groups, ratio, n_boot, seed)
    (ref_n50, ref_bound), (arm_n50, arm_bound) = mean_crossing(reference, 0.5), mean_crossing(groups, 0.5)
    lower_bound = None
    if arm_bound == "below" and ref_n50 is not None:
        lower_bound = ref_n50 / min(groups)
    elif ref_bound == "above" and arm_n50 is not None:
        lower_bound = max(reference) / arm_n50
    return {"data_multiplier": estimate.value, "low": estimate.low, "high": estimate.high,
            "defined": estimate.defined, "lower_bound": lower_bound}


def scaling_summary(rows: list[dict], n_boot: int = 1000, seed: int = 0, reference_arm: str = "baseline") -> dict:
    """Per size, per arm (N50, EMM, onset fit) and data multipliers against `reference_arm`, per capacity.

    `rows`: one per completed trial with arm, capacity, images, seed, memorization_max,
    memorization_onset_kimg (None = censored), loss_gap, best_fid_test. Trials without a memorization value
    are left out of the onset counts: their onset is unknown, not censored.
    """
    by_arm, by_size = defaultdict(list), defaultdict(list)
    for row in rows:
        by_arm[row["capacity"], row["arm"]].append(row)
        by_size[row["capacity"], row["arm"], row["images"]].append(row)
    per_size = [_per_size(arm, capacity, images, by_size[capacity, arm, images], n_boot, seed)
                for capacity, arm, images in sorted(by_size)]
    per_arm, memorization = [], {}
    for capacity, arm in sorted(by_arm):
        row, memorization[capacity, arm] = _per_arm(arm, capacity, by_arm[capacity, arm], n_boot, seed)
        per_arm.append(row)
    multipliers = [
        {"capacity": capacity, "arm": arm, "reference": reference_arm,
         **_multiplier(memorization[capacity, reference_arm], memorization[capacity, arm], n_boot, seed)}
        for capacity, arm in sorted(memorization)
        if arm != reference_arm and (capacity, reference_arm) in memorization and memorization[capacity, arm]
        and memorization[capacity, reference_arm]
    ]
    return {"per_size": per_size, "per_arm": per_arm, "multipliers": multipliers}


def non_dominated(points: Sequence[Sequence[float]], mode: str = "min") -> list[bool]:
    """Per point, whether no other point is at least as good in every objective and better in one (Pareto-optimal)."""
    sign = 1.0 if mode == "min" else -1.0
    signed = [[sign * v for v in point] for point in points]

    def dominated_by(a, b) -> bool:
        return all(y <= x for x, y in zip(a, b)) and any(y < x for x, y in zip(a, b))

    return [not any(dominated_by(p, q) for j, q in enumerate(signed) if j != i) for i, p in enumerate(signed)]
