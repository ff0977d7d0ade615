"""Memorization against training-set size as a dose-response curve, fitted by maximum likelihood.

Per arm a, a trial with N training images has expected memorization_max
    m(N) = F(-slope_a * (log N - theta_a)),    theta_a = log N50_a,
with F the logistic (or normal) CDF: a quantal dose-response curve on a log-dose axis. The data multiplier
N50_ref / N50_a is then a relative potency (Finney's parallel-line assay when the slopes are shared).

The replication unit is the training seed. A trial's S samples come from one network, so its copy count is
beta-binomial (mean m, intra-trial correlation rho, estimated), never binomial over samples: that would
count 256 samples as 256 replicates and make every interval about sqrt(1 + (S - 1) rho) too narrow.

A trial stopped early because it had already copied (`decided`) is right-censored: memorization_max is a
maximum over eval points, so its final value is at least the maximum so far, and it enters as P(K >= k_obs).
Nothing bounds a trial from above before it ends (one that copies nothing yet may copy later), so there is
no low-side stop here.

Intervals are Wald intervals on the log scale (log N50, log EMM, log multiplier) from the observed
information, with a small-sample correction as in quasi-likelihood (McCullagh & Nelder ch. 4): the covariance
is scaled by the Pearson dispersion X^2 / (n - p) of the trials against the fitted beta-binomial (at least 1),
and the quantile is Student's t on n - p degrees of freedom (n: trials whose expected copy and non-copy counts
are both non-trivial, S m (1 - m) >= 1; p: parameters not held at a bound). Without it, rho's maximum
likelihood estimate from a dozen trials is biased low (often 0: binomial), and 95% intervals covered 87% in
bench/design_simulation.py; with it, about 95%.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

# link -> (CDF, quantile, density) of the curve's shape on the logit or probit scale
LINKS = {"logit": (special.expit, special.logit, lambda eta: special.expit(eta) * special.expit(-eta)),
         "probit": (special.ndtr, special.ndtri, stats.norm.pdf)}
_LOG_SLOPE = (math.log(0.25), math.log(40.0))  # slopes outside this range are a step or a flat line
_LOGIT_RHO = (-12.0, 0.0)  # rho in [6e-6, 0.5]: from binomial-like to half the variance shared by a trial
_EPS = 1e-10


@dataclass(frozen=True)
class Observation:
    """One trial: memorization_max of `samples` generated images; `censored`: stopped early, final >= this."""

    arm: str
    images: int
    memorization: float
    censored: bool = False
    seed: int | None = None
    samples: int = 256


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval. `bound` None: a likelihood interval. Otherwise: for a size (N50,
    EMM), "below"/"above" the sizes observed (only `high`/`low` is given); for a multiplier "lower"/"upper"
    (only `low`/`high`); "bracket": the sizes that bracket the crossing, not yet a likelihood interval;
    "unresolved" when the data say nothing yet."""

    value: float | None
    low: float | None
    high: float | None
    bound: str | None = None


def decided(memorization_so_far: Sequence[float], saturation: float = 0.9) -> bool:
    """Whether a running trial's answer is already known: it has copied `saturation` or more at some eval point.

    Its memorization_max can only grow, so stopping it loses nothing but the amount by which it would have
    exceeded the value so far; it then enters as Observation(..., memorization=max so far, censored=True).
    """
    values = [v for v in memorization_so_far if v is not None and math.isfinite(v)]
    return bool(values) and max(values) >= saturation


def bracket(observations: Sequence[Observation], arm: str, level: float = 0.5) -> tuple[int | None, int | None]:
    """(lo, hi): the smallest size whose trials (median) copy under `level`, and the largest smaller size at or
    above it. lo None: the crossing lies below every size tried; hi None: above every size tried.

    A censored trial votes "at or above" when its value so far already is; otherwise it says nothing here.
    """
    votes: dict[int, list[float]] = {}
    for o in observations:
        if o.arm == arm and (not o.censored or o.memorization >= level):
            votes.setdefault(o.images, []).append(o.memorization)
    median = {n: statistics.median(v) for n, v in votes.items()}
    below = [n for n, m in median.items() if m < level]
    hi = min(below) if below else None
    above = [n for n, m in median.items() if m >= level and (hi is None or n < hi)]
    return (max(above) if above else None), hi


@dataclass(frozen=True)
class _Layout:
    """Where each arm's parameters sit in the vector: thetas, then log slopes (one if shared), then logit rho."""

    arms: tuple[str, ...]
    shared_slope: bool

    @property
    def size(self) -> int:
        return len(self.arms) + (1 if self.shared_slope else len(self.arms)) + 1

    def theta(self, arm: str) -> int:
        return self.arms.index(arm)

    def log_slope(self, arm: str) -> int:
        return len(self.arms) + (0 if self.shared_slope else self.arms.index(arm))

    def slope_indices(self, arm_index: np.ndarray) -> np.ndarray:
        return len(self.arms) + (np.zeros_like(arm_index) if self.shared_slope else arm_index)


@dataclass(frozen=True)
class _Data:
    arm: np.ndarray
    log_n: np.ndarray
    count: np.ndarray
    samples: np.ndarray
    censored: np.ndarray

    @classmethod
    def of(cls, observations: Sequence[Observation], arms: tuple[str, ...]) -> _Data:
        samples = np.array([o.samples for o in observations], int)
        return cls(np.array([arms.index(o.arm) for o in observations], int),
                   np.log([float(o.images) for o in observations]),
                   np.clip(np.rint([o.memorization * o.samples for o in observations]).astype(int), 0, samples),
                   samples, np.array([o.censored for o in observations], bool))


def _log_pmf(count, samples, a, b):
    """Beta-binomial log probability of `count` copies among `samples`."""
    return (special.gammaln(samples + 1) - special.gammaln(count + 1) - special.gammaln(samples - count + 1)
            + special.betaln(count + a, samples - count + b) - special.betaln(a, b))


def _score(count, samples, a, b):
    """(d/da, d/db) of the beta-binomial log probability."""
    common = special.digamma(a + b) - special.digamma(samples + a + b)
    return (special.digamma(count + a) - special.digamma(a) + common,
            special.digamma(samples - count + b) - special.digamma(b) + common)


def _exact_terms(count, samples, a, b):
    return (_log_pmf(count, samples, a, b), *_score(count, samples, a, b))


def _tail_terms(count, samples, a, b):
    """log P(K >= count) under the beta-binomial (a right-censored trial), with its (d/da, d/db)."""
    j = np.minimum(np.arange(samples.max() + 1)[None, :], samples[:, None])
    args = (samples[:, None], a[:, None], b[:, None])
    terms = np.where((np.arange(j.shape[1])[None, :] >= count[:, None]) & (np.arange(j.shape[1]) <= args[0]),
                     _log_pmf(j, *args), -np.inf)
    peak = terms.max(axis=1, keepdims=True)
    weights = np.exp(terms - peak)
    total = np.log(weights.sum(axis=1)) + peak[:, 0]
    weights /= weights.sum(axis=1, keepdims=True)
    d_a, d_b = _score(j, *args)
    return total, (weights * d_a).sum(axis=1), (weights * d_b).sum(axis=1)


def _linear(params, data: _Data, layout: _Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eta, slope, slope index) per trial: eta = -slope (log N - theta), the curve's argument."""
    slope_index = layout.slope_indices(data.arm)
    slope = np.exp(params[slope_index])
    return -slope * (data.log_n - params[data.arm]), slope, slope_index


def _objective(params, data: _Data, layout: _Layout, link: str) -> tuple[float, np.ndarray]:
    """Negative log-likelihood and its gradient in (thetas, log slopes, logit rho)."""
    cdf, _, density = LINKS[link]
    eta, slope, slope_index = _linear(params, data, layout)
    raw = cdf(eta)
    mu = np.clip(raw, _EPS, 1 - _EPS)
    d_mu_d_eta = np.where(mu == raw, density(eta), 0.0)
    rho = special.expit(params[-1])
    scale = 1.0 / rho - 1.0
    a, b = mu * scale, (1 - mu) * scale
    value, d_a, d_b = (np.empty(len(mu)) for _ in range(3))
    for rows, terms in ((~data.censored, _exact_terms), (data.censored, _tail_terms)):
        if rows.any():
            value[rows], d_a[rows], d_b[rows] = terms(data.count[rows], data.samples[rows], a[rows], b[rows])
    d_eta = scale * (d_a - d_b) * d_mu_d_eta
    gradient = np.zeros(len(params))
    np.add.at(gradient, data.arm, d_eta * slope)
    np.add.at(gradient, slope_index, d_eta * eta)
    gradient[-1] = -scale * float((mu * d_a + (1 - mu) * d_b).sum())
    return -float(value.sum()), -gradient


def _hessian(gradient, x: np.ndarray, free: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """Central differences of the analytic gradient, in the free coordinates, symmetrised."""
    columns = []
    for p in free:
        up, down = x.copy(), x.copy()
        up[p] += step
        down[p] -= step
        columns.append((gradient(up) - gradient(down))[free] / (2 * step))
    h = np.array(columns)
    return (h + h.T) / 2


def _positive_definite(h: np.ndarray) -> bool:
    eigenvalues = np.linalg.eigvalsh(h)
    return h.size > 0 and eigenvalues.min() > 1e-8 * max(eigenvalues.max(), 1.0)


def _covariance(gradient, x: np.ndarray, bounds: list[tuple[float, float]]) -> np.ndarray:
    """Inverse observed information; parameters at a bound are held there (zero variance). Near the binomial
    limit the likelihood is flat in rho: then the curve's covariance is taken with rho held at its estimate."""
    free = np.flatnonzero([low + 1e-5 < v < high - 1e-5 for v, (low, high) in zip(x, bounds)])
    cov = np.zeros((len(x), len(x)))
    if not free.size:
        return cov
    h = _hessian(gradient, x, free)
    if not _positive_definite(h) and free[-1] == len(x) - 1:
        free, h = free[:-1], h[:-1, :-1]
    cov[np.ix_(free, free)] = np.linalg.inv(h) if _positive_definite(h) else np.nan
    return cov


@dataclass(frozen=True, eq=False)
class Fit:
    """The fitted curves. Sizes and multipliers come back as Interval; see `crossing` for when they are bounds."""

    observations: tuple[Observation, ...]
    layout: _Layout
    link: str
    params: np.ndarray
    covariance: np.ndarray  # inverse observed information times `dispersion`
    loglik: float
    dispersion: float = 1.0  # Pearson X^2 / df against the fitted beta-binomial, at least 1
    df: int = 1  # residual degrees of freedom of the t quantile
    confidence: float = 0.95

    @property
    def arms(self) -> tuple[str, ...]:
        return self.layout.arms

    @property
    def rho(self) -> float:
        """Correlation of copying among one trial's samples (the beta-binomial overdispersion)."""
        return float(special.expit(self.params[-1]))

    def slope(self, arm: str) -> float:
        return float(np.exp(self.params[self.layout.log_slope(arm)]))

    def predict(self, arm: str, images) -> np.ndarray:
        """Expected memorization_max at `images` training images."""
        x = np.log(np.asarray(images, float))
        return LINKS[self.link][0](-self.slope(arm) * (x - self.params[self.layout.theta(arm)]))

    def log_crossing(self, arm: str, level: float = 0.5) -> tuple[float, float]:
        """(estimate, standard error) of log N at which the arm's curve crosses `level`: theta - Q(level)/slope."""
        t, s = self.layout.theta(arm), self.layout.log_slope(arm)
        q = float(LINKS[self.link][1](level))
        gradient = np.array([1.0, q / self.slope(arm)])
        variance = gradient @ self.covariance[np.ix_([t, s], [t, s])] @ gradient if q else self.covariance[t, t]
        return float(self.params[t] - q / self.slope(arm)), math.sqrt(variance) if variance >= 0 else math.nan

    def _quantile(self) -> float:
        return float(stats.t.ppf(0.5 + self.confidence / 2, self.df))

    def resolved(self, arm: str) -> bool:
        """Whether the arm's N50 has a likelihood interval: bracketed by the data, a finite slope, finite SE."""
        lo, hi = bracket(self.observations, arm, 0.5)
        slope_at_top = self.params[self.layout.log_slope(arm)] >= _LOG_SLOPE[1] - 1e-5
        return lo is not None and hi is not None and not slope_at_top and math.isfinite(self.log_crossing(arm)[1])

    def crossing(self, arm: str, level: float = 0.5) -> Interval:
        """Size at which memorization crosses `level`. Not bracketed by the data: a one-sided statement about
        the sizes tried ("below" the smallest voting under `level`, "above" the largest voting at or over it),
        never an extrapolated number. Bracketed but with no likelihood interval yet (a slope too steep to
        locate, a singular information): the bracket itself, flagged "bracket"."""
        lo, hi = bracket(self.observations, arm, level)
        if lo is None or hi is None:
            return Interval(None, None if lo is None else float(lo), None if hi is None else float(hi),
                            "unresolved" if lo is None and hi is None else "below" if lo is None else "above")
        estimate, se = self.log_crossing(arm, level)
        if not self.resolved(arm) or not math.isfinite(se):
            return Interval(float(np.clip(math.exp(estimate), lo, hi)), float(lo), float(hi), "bracket")
        width = self._quantile() * se
        return Interval(math.exp(estimate), math.exp(estimate - width), math.exp(estimate + width))

    def n50(self, arm: str) -> Interval:
        return self.crossing(arm, 0.5)

    def emm(self, arm: str) -> Interval:
        """Gu et al.'s effective model memorization as this project reads it: the size where the arm copies 90%."""
        return self.crossing(arm, 0.9)

    def multiplier(self, arm: str, reference: str = "baseline") -> Interval:
        """Data multiplier N50_reference / N50_arm. Both resolved: Wald on the log ratio with the covariance.
        Otherwise what the two N50 intervals imply (a one-sided bound when one N50 is only bounded)."""
        ref, own = self.n50(reference), self.n50(arm)
        if self.resolved(reference) and self.resolved(arm):
            i, j = self.layout.theta(reference), self.layout.theta(arm)
            log_ratio = self.params[i] - self.params[j]
            se = math.sqrt(max(self.covariance[i, i] + self.covariance[j, j] - 2 * self.covariance[i, j], 0.0))
            width = self._quantile() * se
            return Interval(math.exp(log_ratio), math.exp(log_ratio - width), math.exp(log_ratio + width))
        low = ref.low / own.high if ref.low is not None and own.high is not None else None
        high = ref.high / own.low if ref.high is not None and own.low is not None else None
        value = ref.value / own.value if ref.value is not None and own.value is not None else None
        if value is not None:
            return Interval(value, low, high, "bracket")
        return Interval(None, low, high, "lower" if low is not None and high is None else
                        "upper" if high is not None and low is None else "unresolved")


def _dispersion(params, data: _Data, layout: _Layout, link: str, free: int) -> tuple[float, int]:
    """(max(1, X^2 / df), df): Pearson statistic of the uncensored trials against the fitted beta-binomial.
    Trials whose expected variance S m (1 - m) is under 1 (all or nothing expected) are left out: their residual
    is almost always 0 and would only deflate X^2."""
    mu = LINKS[link][0](_linear(params, data, layout)[0])
    rho = special.expit(params[-1])
    variance = data.samples * mu * (1 - mu)
    used = ~data.censored & (variance >= 1.0)
    df = max(int(used.sum()) - free, 1)
    inflation = 1 + (data.samples[used] - 1) * rho
    x2 = float(((data.count[used] - data.samples[used] * mu[used]) ** 2 / (variance[used] * inflation)).sum())
    return max(x2 / df, 1.0), df


def _bounds(data: _Data, layout: _Layout) -> list[tuple[float, float]]:
    theta = (float(data.log_n.min()) - 3.0, float(data.log_n.max()) + 3.0)
    slopes = layout.size - len(layout.arms) - 1
    return [theta] * len(layout.arms) + [_LOG_SLOPE] * slopes + [_LOGIT_RHO]


def _default_start(observations, layout: _Layout) -> np.ndarray:
    """Each arm's N50 at the middle of its bracket (or past the sizes tried), slope 3, rho 0.01."""
    x = np.empty(layout.size)
    for i, arm in enumerate(layout.arms):
        lo, hi = bracket(observations, arm)
        sizes = [o.images for o in observations if o.arm == arm]
        x[i] = (math.log(lo or min(sizes) / 2) + math.log(hi or max(sizes) * 2)) / 2
    x[len(layout.arms):-1], x[-1] = math.log(3.0), special.logit(0.01)
    return x


def _starts(observations, layout: _Layout, start: Fit | None) -> list[np.ndarray]:
    """Where the optimizer starts: the default, and the previous fit when it has the same arms. Both always run:
    from a warm start alone, L-BFGS-B was seen to stay in a far worse mode (N50 off the sizes tried, a step
    slope, rho near its top) that explains every trial as noise."""
    default = _default_start(observations, layout)
    return [default] if start is None or start.layout != layout else [start.params.copy(), default]


def fit(observations: Sequence[Observation], slope: str = "arm", link: str = "logit", start: Fit | None = None,
        confidence: float = 0.95) -> Fit:
    """Maximum-likelihood fit of every arm's curve; `slope` "arm" (one per arm) or "shared" (parallel lines);
    `start` warm-starts from an earlier fit (a design refits after every trial)."""
    if slope not in ("arm", "shared") or link not in LINKS:
        raise ValueError(f"slope must be 'arm' or 'shared' and link one of {sorted(LINKS)}, got {slope!r}, {link!r}")
    observations = tuple(observations)
    if not observations:
        raise ValueError("no observations to fit")
    layout = _Layout(tuple(sorted({o.arm for o in observations})), slope == "shared")
    data = _Data.of(observations, layout.arms)
    bounds = _bounds(data, layout)

    def objective(p):
        return _objective(p, data, layout, link)

    low, high = np.array(bounds).T
    result = None
    for x0 in _starts(observations, layout, start):
        attempt = optimize.minimize(objective, np.clip(x0, low, high), jac=True, method="L-BFGS-B", bounds=bounds)
        result = attempt if result is None or attempt.fun < result.fun - 1e-9 else result
    covariance = _covariance(lambda p: objective(p)[1], result.x, bounds)
    dispersion, df = _dispersion(result.x, data, layout, link, int((np.diag(covariance) != 0).sum()))
    return Fit(observations, layout, link, result.x, covariance * dispersion, -float(result.fun), dispersion, df,
               confidence)
