"""The memorization model recovers known curves, uses censored trials as censored, and says "bound" when the data
do not bracket N50; the design is deterministic, stays in [n_min, n_max] and spreads a batch over sizes."""

import math

import numpy as np
import pytest
from scipy import special

from study.stats.design import Design, Placement, State, StoppingRule, next_round, phase, stop_reason
from study.stats.memorization_model import Observation, decided, fit

TRUTH = {"baseline": (78.0, 3.5), "scoreaug": (33.0, 5.3)}  # N50, slope: the published grid run's curves
RHO = 0.004


def trial(arm: str, images: int, rng, truth=TRUTH, samples: int = 256) -> Observation:
    """One seeded trial: beta-binomial copies out of `samples`, mean on the arm's logistic curve in log N."""
    n50, slope = truth[arm]
    mean = special.expit(-slope * (math.log(images) - math.log(n50)))
    concentration = 1 / RHO - 1
    p = rng.beta(max(mean * concentration, 1e-9), max((1 - mean) * concentration, 1e-9))
    return Observation(arm, images, rng.binomial(samples, p) / samples, samples=samples)


def synthetic(seed: int, sizes_per_arm=None, seeds: int = 3) -> list[Observation]:
    rng = np.random.default_rng(seed)
    sizes = sizes_per_arm or {"baseline": (45, 60, 78, 100, 130), "scoreaug": (22, 27, 33, 40, 50)}
    return [trial(arm, n, rng) for arm, ns in sizes.items() for n in ns for _ in range(seeds)]


@pytest.mark.parametrize("slope", ["arm", "shared"])
def test_fit_recovers_n50_and_multiplier(slope):
    truth = {"baseline": (78.0, 4.2), "scoreaug": (33.0, 4.2)} if slope == "shared" else TRUTH
    rng = np.random.default_rng(1)
    sizes = {"baseline": (45, 60, 78, 100, 130), "scoreaug": (22, 27, 33, 40, 50)}
    observations = [trial(arm, n, rng, truth) for arm, ns in sizes.items() for n in ns for _ in range(3)]
    result = fit(observations, slope=slope)
    for arm, (n50, _) in truth.items():
        interval = result.n50(arm)
        assert interval.bound is None and abs(math.log(interval.value / n50)) < 0.05
        assert interval.low < interval.value < interval.high < 1.15 * interval.low  # coverage: the next test
    multiplier = result.multiplier("scoreaug", "baseline")
    assert abs(math.log(multiplier.value / (78 / 33))) < 0.06
    emm = result.emm("baseline")  # where no size tried copies 90%, only a bound: below the smallest size, 45
    assert emm.value < result.n50("baseline").value if emm.bound is None else (emm.bound, emm.high) == ("below", 45)


def test_intervals_cover_across_seeds():
    """The 95% multiplier interval holds the truth in most of 20 synthetic studies (coverage: the bench)."""
    intervals = [fit(synthetic(seed)).multiplier("scoreaug") for seed in range(20)]
    assert np.mean([i.low < 78 / 33 < i.high for i in intervals]) >= 0.8


def test_a_right_censored_trial_counts_as_at_least_its_value():
    """A trial stopped at 0.6 copies at least 0.6 at the end: as censored it pulls the curve (and N50) up, past
    where the same value taken as final puts it; the two fits differ."""
    rng = np.random.default_rng(3)
    base = [trial("baseline", n, rng) for n in (45, 60, 78, 100, 130) for _ in range(2)]
    stopped = Observation("baseline", 100, 0.6, censored=True)
    as_final = Observation("baseline", 100, 0.6, censored=False)
    censored_fit, exact_fit = fit(base + [stopped]), fit(base + [as_final])
    assert censored_fit.loglik != exact_fit.loglik
    assert censored_fit.n50("baseline").value > exact_fit.n50("baseline").value


def test_a_saturated_censored_trial_is_nearly_as_good_as_finished():
    """Stopping at 0.9 loses little: N50 from the censored trial stays within 2% of the finished one."""
    rng = np.random.default_rng(4)
    base = [trial("baseline", n, rng) for n in (60, 78, 100, 130) for _ in range(2)]
    censored = fit(base + [Observation("baseline", 40, 0.9, censored=True)]).n50("baseline").value
    finished = fit(base + [Observation("baseline", 40, 0.95)]).n50("baseline").value
    assert abs(math.log(censored / finished)) < 0.02


def test_unbracketed_n50_is_a_bound_not_a_number():
    """Every size copies under 50%: N50 lies below the smallest, and the multiplier is only a lower bound."""
    rng = np.random.default_rng(5)
    observations = synthetic(5, {"baseline": (45, 60, 78, 100)}) + [trial("scoreaug", n, rng) for n in (45, 60, 90)
                                                                      for _ in range(2)]
    result = fit(observations)
    n50 = result.n50("scoreaug")
    assert n50.value is None and n50.bound == "below" and n50.high == 45
    multiplier = result.multiplier("scoreaug", "baseline")
    assert multiplier.value is None and multiplier.bound == "lower" and multiplier.high is None
    assert multiplier.low == pytest.approx(result.n50("baseline").low / 45)


def test_decided_only_when_saturated():
    assert decided([0.1, 0.5, 0.92])
    assert not decided([0.1, 0.5, 0.89])
    assert not decided([]) and not decided([math.nan, None])


def _run(design: Design, rounds: int, slots: int, seed: int, truth=TRUTH) -> State:
    """A few rounds of the design on synthetic trials (every placement finishes before the next round)."""
    rng, state = np.random.default_rng(seed), State(design)
    for _ in range(rounds):
        placements = next_round(state, slots)
        if not placements:
            break
        state = State(design, state.observations + tuple(trial(p.arm, p.images, rng, truth) for p in placements))
    return state


def test_placement_is_deterministic_and_stays_in_range():
    design = Design(("baseline", "scoreaug"), n_min=10, n_max=1438)
    state = _run(design, 6, 2, seed=6)
    first, second = next_round(state, 4), next_round(state, 4)
    assert first == second and len(first) == 4
    placed = [o.images for o in state.observations] + [p.images for p in first]
    assert min(placed) >= 10 and max(placed) <= 1438
    assert all(p.reason in ("bracket", "refine", "confirm") for p in first)


def test_an_n50_below_the_range_is_confirmed_at_n_min_and_then_left_alone():
    """ScoreAug that copies under 50% at every size from 10 up: bisection reaches n_min ("confirm"), then the arm
    is done and its N50 is a bound; nothing is ever placed below n_min."""
    truth = {"baseline": (78.0, 3.5), "scoreaug": (6.0, 5.3)}
    design = Design(("baseline", "scoreaug"), n_min=10, n_max=1438)
    state = _run(design, 14, 2, seed=7, truth=truth)
    scoreaug = [o.images for o in state.observations if o.arm == "scoreaug"]
    assert min(scoreaug) == 10 and phase(state, "scoreaug", fit(state.observations)) == "done"
    assert all(p.arm == "baseline" for p in next_round(state, 3))
    assert fit(state.observations).n50("scoreaug").bound == "below"


def test_a_batch_with_pending_trials_spreads_over_sizes():
    """Constant liar: pending trials count as having returned their expected information, and repeats at one
    size give diminishing returns, so a batch of 12 does not pile onto the N50 estimate."""
    design = Design(("baseline", "scoreaug"), n_min=10, n_max=1438)
    state = _run(design, 6, 2, seed=8)
    batch = next_round(state, 12)
    assert len(batch) == 12 and all(p.reason == "refine" for p in batch)
    for arm in ("baseline", "scoreaug"):
        sizes = [p.images for p in batch if p.arm == arm]
        assert len(set(sizes)) >= min(len(sizes), 3)
    pending = State(design, state.observations, tuple(batch[:6]))
    assert next_round(pending, 6) == batch[6:]  # the same greedy batch, whether asked at once or with pending


def test_first_round_brackets_across_the_range():
    batch = next_round(State(Design(("baseline", "scoreaug"), n_min=10, n_max=1438)), 6)
    assert [p.reason for p in batch] == ["bracket"] * 6
    for arm in ("baseline", "scoreaug"):
        sizes = sorted(p.images for p in batch if p.arm == arm)
        assert len(set(sizes)) == 3 and sizes[0] < 120 < sizes[-1]


def test_stopping_rule():
    design = Design(("baseline", "scoreaug"), n_min=10, n_max=1438)
    state = _run(design, 8, 2, seed=9)
    result = fit(state.observations)
    assert stop_reason(state, result, StoppingRule(max_trials=len(state.observations))) == "trials"
    assert stop_reason(state, result, StoppingRule(max_kimg=100), kimg_spent=120) == "kimg"
    assert stop_reason(state, result, StoppingRule(target_log_width=10.0)) == "precise"
    assert stop_reason(state, result, StoppingRule(target_log_width=1e-3)) is None


def test_design_refuses_a_range_that_is_not_one():
    with pytest.raises(ValueError):
        Design(("baseline",), n_min=0, n_max=100)
    with pytest.raises(ValueError):
        Design(("scoreaug",), n_min=10, n_max=100)
    assert Placement("baseline", 10, "refine").images == 10


def test_with_many_slots_a_bracketing_arm_keeps_up_with_a_refining_one():
    """Baseline located, ScoreAug still under 50% at every size tried: of 16 slots ScoreAug gets about half, spread
    over its open interval below 35 images, instead of one bracket trial beside 15 baseline refinements."""
    rng = np.random.default_rng(10)
    observations = [trial("baseline", n, rng) for n in (35, 66, 91, 125)] + [
        Observation("scoreaug", 35, 0.41), Observation("scoreaug", 125, 0.0)]
    design = Design(("baseline", "scoreaug"), n_min=10, n_max=1438)
    batch = next_round(State(design, tuple(observations)), 16)
    scoreaug = [p for p in batch if p.arm == "scoreaug"]
    assert len(batch) == 16 and 6 <= len(scoreaug) <= 10
    assert all(p.reason in ("bracket", "confirm") and 10 <= p.images < 35 for p in scoreaug)
    assert len({p.images for p in scoreaug}) == len(scoreaug)
