"""Where to train next: an adaptive design for each arm's N50 and the data multiplier.

A fixed grid spends most of its trials where memorization is already 0 or 1. This design spends them where
they tell about N50, in three kinds of placement, per arm:
- bracket: until the arm has a size that copies half its samples or more and a larger one that copies less,
  and the fit places N50 with a standard error under `max_se`, each trial splits the widest log gap of the
  interval still open (log bisection, the idea of up-and-down and dose-finding designs). Pending trials
  occupy their sizes, so a batch spreads over the interval instead of repeating its midpoint.
- confirm: the bisection reached n_min or n_max; a trial there says whether N50 lies outside the range (then
  the arm is done and its N50 is a one-sided bound).
- refine: the (arm, size) that most reduces the expected variance of log N50, weighted for the multiplier,
  averaged over the current uncertainty of (log N50, log slope): a pseudo-Bayesian c-optimal design.
  Pending trials count as having returned their expected information (kriging believer), and trials at one
  size share a lack-of-fit term (the curve is only approximately logistic), so repeats at one size give
  diminishing returns and a batch spreads over the sizes around N50.

Pure and deterministic: the same observations and pending trials give the same placements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from study.stats import memorization_model as model
from study.stats.memorization_model import Fit, Observation

REASONS = ("bracket", "refine", "confirm")
_NODES = np.array([-math.sqrt(3.0), 0.0, math.sqrt(3.0)])  # 3-point Gauss-Hermite for a standard normal
_WEIGHTS = np.array([1.0, 4.0, 1.0]) / 6.0
_PRIOR_SD = np.array([1.5, 1.0])  # design-only prior on (log N50, log slope): keeps the information invertible
_MAX_SD = np.array([1.0, 0.7])  # the widest parameter spread the design averages over


@dataclass(frozen=True)
class Placement:
    """One trial to start: `reason` is "bracket", "refine" or "confirm"."""

    arm: str
    images: int
    reason: str


@dataclass(frozen=True)
class Design:
    """The study's fixed choices. Sizes are image counts in [n_min, n_max]. n_min comes from the caller:
    a class-balanced subset needs at least one image per class (10 for digits), so nothing is placed below it.
    `lack_of_fit`: logit-scale SD of a size's departure from the curve; `max_se`: log N50 standard error
    below which an arm is refined rather than bracketed; `bracket_pending`: bracket trials in flight per arm."""

    arms: tuple[str, ...]
    n_min: int
    n_max: int
    reference: str = "baseline"
    samples: int = 256
    slope: str = "arm"  # the model's slope: one per arm, or "shared"
    link: str = "logit"  # the model's curve: "logit" or "probit"
    lack_of_fit: float = 0.1
    max_se: float = 0.3
    bracket_pending: int = 3
    candidates: int = 64

    def __post_init__(self):
        if not 1 <= self.n_min < self.n_max:
            raise ValueError(f"need 1 <= n_min < n_max, got {self.n_min}, {self.n_max}")
        if self.reference not in self.arms:
            raise ValueError(f"reference arm {self.reference!r} is not among the arms {self.arms}")

    def sizes(self) -> np.ndarray:
        """Candidate sizes: about `candidates` log-spaced integers, both ends included."""
        grid = np.rint(np.geomspace(self.n_min, self.n_max, self.candidates)).astype(int)
        return np.unique(np.clip(grid, self.n_min, self.n_max))


@dataclass(frozen=True)
class State:
    """What the design knows: finished (or stopped) trials and the placements still running."""

    design: Design
    observations: tuple[Observation, ...] = ()
    pending: tuple[Placement, ...] = ()


def phase(state: State, arm: str, fit: Fit | None) -> str:
    """"bracket", "refine", or "done" (N50 shown to lie outside [n_min, n_max]; nothing in range sharpens it)."""
    design = state.design
    if not any(o.arm == arm for o in state.observations):
        return "bracket"
    lo, hi = model.bracket(state.observations, arm)
    if (lo is None and hi is not None and hi <= design.n_min) or (hi is None and lo is not None and lo >= design.n_max):
        return "done"
    if lo is None or hi is None:
        return "bracket"
    precise = fit is not None and arm in fit.arms and fit.resolved(arm) and fit.log_crossing(arm)[1] <= design.max_se
    return "refine" if precise or not _open_sizes(state, arm, ()).size else "bracket"


def _interval(state: State, arm: str) -> tuple[int, int, bool, bool]:
    """The open interval of sizes for N50: (low end, high end, low end observed, high end observed)."""
    lo, hi = model.bracket(state.observations, arm) if any(o.arm == arm for o in state.observations) else (None, None)
    return (lo or state.design.n_min), (hi or state.design.n_max), lo is not None, hi is not None


def _open_sizes(state: State, arm: str, pending: Sequence[Placement]) -> np.ndarray:
    """Candidate sizes inside the arm's open interval that no pending trial of the arm occupies."""
    low, high, low_seen, high_seen = _interval(state, arm)
    sizes = state.design.sizes()
    inside = (sizes > low if low_seen else sizes >= low) & (sizes < high if high_seen else sizes <= high)
    taken = {p.images for p in pending if p.arm == arm}
    return np.array([n for n in sizes[inside] if n not in taken], int)


def _bracket_placement(state: State, arm: str, pending: Sequence[Placement], cap: int) -> Placement | None:
    """Split the widest log gap of the arm's open interval, the interval's ends and pending sizes included;
    None when `cap` bracket trials of the arm are already in flight."""
    if sum(p.arm == arm and p.reason != "refine" for p in pending) >= cap:
        return None
    sizes = _open_sizes(state, arm, pending)
    if not sizes.size:
        return None
    low, high, _, _ = _interval(state, arm)
    occupied = np.log([low, high] + [p.images for p in pending if p.arm == arm])
    distance = np.abs(np.log(sizes)[:, None] - occupied[None, :]).min(axis=1)
    images = int(sizes[int(np.argmax(distance))])
    end = images in (state.design.n_min, state.design.n_max)
    return Placement(arm, images, "confirm" if end else "bracket")


def _draws(fit: Fit | None, state: State, arm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log N50, log slope, weight) at 9 Gauss-Hermite points of the fit's uncertainty, spread capped."""
    if fit is None or arm not in fit.arms:
        low, high, _, _ = _interval(state, arm)
        mean = np.array([0.5 * math.log(low * high), math.log(3.0)])
        cov = np.diag([math.log(high / low) ** 2 / 16, 0.25])
    else:
        t, s = fit.layout.theta(arm), fit.layout.log_slope(arm)
        mean, cov = fit.params[[t, s]], fit.covariance[np.ix_([t, s], [t, s])]
        if not np.all(np.isfinite(cov)):
            low, high, _, _ = _interval(state, arm)
            cov = np.diag([max(math.log(high / low), 0.1) ** 2 / 16, 0.25])
    sd = np.sqrt(np.clip(np.diag(cov), 1e-8, None))
    correlation = np.clip(cov[0, 1] / (sd[0] * sd[1]), -0.95, 0.95)
    sd = np.minimum(sd, _MAX_SD)
    root = np.linalg.cholesky(np.array([[1.0, correlation], [correlation, 1.0]]))
    z = np.stack(np.meshgrid(_NODES, _NODES, indexing="ij"), -1).reshape(-1, 2) @ root.T
    return mean[0] + sd[0] * z[:, 0], mean[1] + sd[1] * z[:, 1], np.outer(_WEIGHTS, _WEIGHTS).ravel()


def _information(log_n: np.ndarray, count: np.ndarray, draws, dispersion: float, state: State) -> np.ndarray:
    """(K, sizes, 2, 2): information on (log N50, log slope) from `count` trials at each size, per draw.

    Per trial the logit-scale information is S f(eta)^2 / (m (1 - m) D), D = 1 + (S - 1) rho the beta-binomial
    inflation; `count` trials at one size share a lack-of-fit term of variance tau^2, so they add up to at
    most 1 / tau^2."""
    theta, log_slope, _ = draws
    cdf, _, density = model.LINKS[state.design.link]
    slope = np.exp(log_slope)[:, None]
    eta = -slope * (log_n[None, :] - theta[:, None])
    mu = np.clip(cdf(eta), 1e-9, 1 - 1e-9)
    per_trial = state.design.samples * density(eta) ** 2 / (mu * (1 - mu) * dispersion)
    gain = count * per_trial / (1 + count * per_trial * state.design.lack_of_fit ** 2)
    gradient = np.stack([np.broadcast_to(slope, eta.shape), eta], -1)  # d eta / d(log N50, log slope)
    return gain[..., None, None] * gradient[..., :, None] * gradient[..., None, :]


def _theta_variance(information: np.ndarray) -> np.ndarray:
    """[I^-1]_00 of a stack of 2x2 information matrices."""
    det = information[..., 0, 0] * information[..., 1, 1] - information[..., 0, 1] ** 2
    return information[..., 1, 1] / det


def _refine_scores(state: State, arm: str, fit: Fit | None,
                   pending: Sequence[Placement]) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, expected reduction of var(log N50)) for one more trial of `arm` at each candidate size."""
    counts: dict[int, int] = {}
    for images in [o.images for o in state.observations if o.arm == arm] + [p.images for p in pending if p.arm == arm]:
        counts[images] = counts.get(images, 0) + 1
    draws = _draws(fit, state, arm)
    dispersion = 1 + (state.design.samples - 1) * (fit.rho if fit is not None else 0.01)
    prior = np.diag(1.0 / _PRIOR_SD ** 2)
    occupied = np.array(sorted(counts), float)
    total = prior + _information(np.log(occupied), np.array([counts[int(n)] for n in occupied]), draws, dispersion,
                                 state).sum(axis=1) if counts else np.broadcast_to(prior, (len(draws[0]), 2, 2))
    sizes = state.design.sizes()
    before = np.array([counts.get(int(n), 0) for n in sizes])
    log_n = np.log(sizes.astype(float))
    extra = (_information(log_n, before + 1, draws, dispersion, state)
             - _information(log_n, before, draws, dispersion, state))
    reduction = _theta_variance(total)[:, None] - _theta_variance(total[:, None] + extra)
    return sizes, draws[2] @ reduction


def _refine_placement(state: State, arms: Sequence[str], fit: Fit | None,
                      pending: Sequence[Placement]) -> Placement | None:
    """The best (arm, size) by expected variance reduction; the reference arm's N50 enters every multiplier."""
    best, best_score = None, -np.inf
    others = len(state.design.arms) - 1
    for arm in arms:
        sizes, scores = _refine_scores(state, arm, fit, pending)
        weight = 1 + (others if arm == state.design.reference else 1)
        i = int(np.argmax(scores))
        if weight * scores[i] > best_score:
            best, best_score = Placement(arm, int(sizes[i]), "refine"), weight * scores[i]
    return best


def _next_placement(state: State, fit: Fit | None, pending: Sequence[Placement]) -> Placement | None:
    """An arm waiting for its first bracket goes first. A bracketing arm then keeps up with the refining arms,
    trial for trial in flight (with many slots, one refining arm would otherwise take them all while another
    arm's N50 is still unknown). Then the best refinement; then further bracket trials, up to bracket_pending
    in flight, when nothing can be refined."""
    arms = state.design.arms
    phases = {arm: phase(state, arm, fit) for arm in arms}
    in_flight = {arm: sum(p.arm == arm and p.reason != "refine" for p in pending) for arm in arms}
    refining = max([sum(p.arm == arm for p in pending) for arm in arms if phases[arm] == "refine"], default=0)
    cap = max(state.design.bracket_pending, refining)
    brackets = [p for arm in arms if phases[arm] == "bracket"
                for p in [_bracket_placement(state, arm, pending, cap)] if p is not None]
    behind = [p for p in brackets if not in_flight[p.arm] or in_flight[p.arm] < refining]
    if behind:  # the arm with the fewest trials first: with fewer slots than arms, none waits forever
        tried = {arm: sum(o.arm == arm for o in state.observations) for arm in arms}
        return min(behind, key=lambda p: (in_flight[p.arm], tried[p.arm], arms.index(p.arm)))
    refine = _refine_placement(state, [arm for arm in arms if phases[arm] == "refine"], fit, pending)
    if refine is not None or not brackets:
        return refine
    return min(brackets, key=lambda p: (in_flight[p.arm], arms.index(p.arm)))


def next_round(state: State, slots: int, fit: Fit | None = None) -> list[Placement]:
    """The next `slots` placements (fewer when bracketing must wait for results). `fit`: the current fit of
    state.observations, when the caller has it (else it is fitted here)."""
    if fit is None and state.observations:
        fit = model.fit(state.observations, slope=state.design.slope, link=state.design.link)
    placed: list[Placement] = []
    for _ in range(slots):
        placement = _next_placement(state, fit, state.pending + tuple(placed))
        if placement is None:
            break
        placed.append(placement)
    return placed


@dataclass(frozen=True)
class StoppingRule:
    """Stop when every multiplier's interval is this narrow (full width on the log scale; 0.2 is about +-10%)
    or decided as a bound, or when a trial or kimg budget is spent."""

    target_log_width: float = 0.2
    max_trials: int | None = None
    max_kimg: float | None = None


def stop_reason(state: State, fit: Fit | None, rule: StoppingRule, kimg_spent: float = 0.0) -> str | None:
    """"trials", "kimg" or "precise" when the study can stop; None to go on."""
    if rule.max_trials is not None and len(state.observations) >= rule.max_trials:
        return "trials"
    if rule.max_kimg is not None and kimg_spent >= rule.max_kimg:
        return "kimg"
    if fit is None:
        return None
    design = state.design
    for arm in design.arms:
        if arm == design.reference:
            continue
        if "done" in (phase(state, arm, fit), phase(state, design.reference, fit)):
            continue
        interval = fit.multiplier(arm, design.reference) if arm in fit.arms and design.reference in fit.arms else None
        if interval is None or interval.bound is not None or interval.low is None or interval.high is None:
            return None
        if math.log(interval.high / interval.low) > rule.target_log_width:
            return None
    return "precise"
