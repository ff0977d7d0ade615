"""What an adaptive design's trials say, from the fitted model: each arm's N50 and EMM, the data multipliers, and
how those estimates moved, round by round and along training time.

Every trial's memorization curve is kept, so the same trials answer the question at each eval kimg: a trial's
memorization_max up to kimg k is exact where it trained to k, and right-censored where it was stopped earlier
as decided (it had copied `saturation` by then, and its maximum can only grow). That gives N50 against training
time, the memorization phase diagram, without a single extra trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from study.stats import memorization_model as model

Z95 = float(stats.norm.ppf(0.975))


@dataclass(frozen=True)
class DesignTrial:
    """One ended trial of the design: where it was placed, and its memorization at each eval point."""

    arm: str
    images: int
    round: int
    points: tuple[tuple[float, float], ...]  # (kimg, memorization), in training order
    last_kimg: float  # where it stopped (its budget, or earlier when decided)
    samples: int = 256
    best_fid_test: float | None = None  # the best held-out FID over its eval points

    @property
    def memorization_max(self) -> float:
        return max(m for _, m in self.points)

    def observation(self, kimg: float) -> model.Observation | None:
        """Its memorization_max up to `kimg`: exact if it trained that far, else right-censored."""
        seen = [m for k, m in self.points if k <= kimg + 1e-9]
        if not seen:
            return None
        return model.Observation(self.arm, self.images, max(seen), censored=self.last_kimg < kimg - 1e-6,
                                 samples=self.samples)


def _interval(interval: model.Interval, name: str) -> dict:
    return {name: interval.value, f"{name}_low": interval.low, f"{name}_high": interval.high, f"{name}_bound": interval.bound}


def estimates(observations: Sequence[model.Observation], reference: str, slope: str = "arm") -> dict | None:
    """Per arm N50 and EMM, and each arm's multiplier against `reference`, with their intervals; None without data
    enough to fit (no observation, or an arm-less fit)."""
    observations = [o for o in observations if o is not None]
    if not observations:
        return None
    fit = model.fit(observations, slope=slope)
    per_arm = [{"arm": arm, "trials": sum(o.arm == arm for o in observations),
                **_interval(fit.n50(arm), "n50"), **_interval(fit.emm(arm), "emm")} for arm in fit.arms]
    multipliers = [{"arm": arm, "reference": reference, **_interval(fit.multiplier(arm, reference), "data_multiplier")}
                   for arm in fit.arms if arm != reference and reference in fit.arms]
    return {"per_arm": per_arm, "multipliers": multipliers, "slope": {arm: fit.slope(arm) for arm in fit.arms},
            "overdispersion": fit.rho, "curves": {arm: curve_band(fit, arm, observations) for arm in fit.arms}}


def curve_band(fit: model.Fit, arm: str, observations: Sequence[model.Observation], draws: int = 400) -> dict:
    """The fitted curve over the sizes tried, with a pointwise 95% band from the parameters' sampling distribution
    (drawn with a fixed seed, so a report reproduces); no band where the fit has no finite covariance."""
    sizes = np.geomspace(min(o.images for o in observations), max(o.images for o in observations), 60)
    curve = {"images": sizes.tolist(), "mid": fit.predict(arm, sizes).tolist(), "low": None, "high": None}
    if np.all(np.isfinite(fit.covariance)):
        rng = np.random.default_rng(0)
        params = rng.multivariate_normal(fit.params, fit.covariance, size=draws, check_valid="ignore")
        predictions = np.array([replace(fit, params=p).predict(arm, sizes) for p in params])
        curve["low"], curve["high"] = (np.percentile(predictions, q, axis=0).tolist() for q in (2.5, 97.5))
    return curve


def by_round(trials: Sequence[DesignTrial], total_kimg: float, reference: str, slope: str = "arm") -> list[dict]:
    """The estimates after each round, from the trials placed up to it: how the answer converged."""
    rounds = sorted({t.round for t in trials})
    return [{"round": r, **(estimates([t.observation(total_kimg) for t in trials if t.round <= r], reference, slope) or {})}
            for r in rounds]


def by_kimg(trials: Sequence[DesignTrial], reference: str, slope: str = "arm") -> list[dict]:
    """The estimates at each eval kimg: N50 against training time, and whether the multiplier holds."""
    kimgs = sorted({k for t in trials for k, _ in t.points})
    return [{"kimg": k, **(estimates([t.observation(k) for t in trials], reference, slope) or {})} for k in kimgs]


def cost(trials: Sequence[DesignTrial], total_kimg: float) -> dict[str, dict]:
    """Per arm: trials run, trial-kimg spent, trials stopped early as decided."""
    return {arm: {"trials": len(mine), "kimg": sum(t.last_kimg for t in mine),
                  "stopped_decided": sum(t.last_kimg < total_kimg - 1e-6 for t in mine)}
            for arm in sorted({t.arm for t in trials}) for mine in [[t for t in trials if t.arm == arm]]}


def fid_cost(trials: Sequence[DesignTrial], reference: str) -> list[dict]:
    """Each arm's sample-quality price where nobody copies: its best fid_test minus the reference arm's, among the
    trials that copied no sample at any eval point, adjusted for their sizes.

    A design places the arms' uncopied trials at different sizes (each just above its own N50), so raw means would
    compare sizes, not arms: best_fid_test = a + b log N + c_arm, least squares with one shared size slope, and
    c_arm with a t interval on the residual degrees of freedom. Empty where an arm or the residual has no trial, or
    where each arm's uncopied trials sit at one size (size and arm cannot then be told apart)."""
    clean = [t for t in trials if t.best_fid_test is not None and np.isfinite(t.best_fid_test)
             and t.memorization_max == 0.0]
    arms = [a for a in sorted({t.arm for t in clean}) if a != reference]
    if not arms or not any(t.arm == reference for t in clean):
        return []
    x = np.array([[1.0, np.log(t.images)] + [float(t.arm == a) for a in arms] for t in clean])
    y = np.array([t.best_fid_test for t in clean])
    dof = len(y) - x.shape[1]
    if dof < 1 or np.linalg.matrix_rank(x) < x.shape[1]:
        return []
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    sigma2 = float(np.sum((y - x @ coef) ** 2)) / dof
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(x.T @ x)))
    half = stats.t.ppf(0.975, dof) * se
    return [{"arm": a, "reference": reference, "trials": sum(t.arm == a for t in clean),
             "reference_trials": sum(t.arm == reference for t in clean), "fid_cost": float(coef[2 + i]),
             "fid_cost_low": float(coef[2 + i] - half[2 + i]), "fid_cost_high": float(coef[2 + i] + half[2 + i])}
            for i, a in enumerate(arms)]


def trend_per_doubling(points: Sequence[tuple[float, float, float, float]]) -> dict | None:
    """How a ratio estimate (a data multiplier) changes per doubling of a capacity axis, from independent estimates
    (capacity, value, low, high) with 95% intervals on the log scale: log value = a + b log2 capacity, inverse-variance
    weighted least squares, returned as the factor exp(b) with a 95% interval.

    Each estimate's SE is its log interval's half-width / 1.96 (Z95): at least its Wald SE, as the model's intervals use
    t quantiles. Scatter beyond those SEs widens the interval by the Pearson dispersion (at least 1), as the model's
    own intervals are widened. None with fewer than three two-sided estimates."""
    usable = [(c, v, lo, hi) for c, v, lo, hi in points if None not in (v, lo, hi) and c > 0 and lo > 0]
    if len(usable) < 3:
        return None
    x = np.log2([c for c, *_ in usable])
    y = np.log([v for _, v, *_ in usable])
    weights = (2 * Z95 / np.log([hi / lo for *_, lo, hi in usable])) ** 2
    centred = x - np.average(x, weights=weights)
    slope_var = 1 / np.sum(weights * centred**2)
    slope = float(np.sum(weights * centred * y) * slope_var)
    intercept = np.average(y - slope * x, weights=weights)
    dispersion = max(1.0, float(np.sum(weights * (y - intercept - slope * x) ** 2)) / (len(usable) - 2))
    half = Z95 * np.sqrt(slope_var * dispersion)
    return {"factor_per_doubling": math.exp(slope), "low": math.exp(slope - half), "high": math.exp(slope + half),
            "estimates": len(usable), "dispersion": dispersion}
