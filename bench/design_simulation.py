"""Does the adaptive design find N50 and the data multiplier as well as the fixed grid, for less compute?

Ground truth from the published grid run (docs/results.md), per arm (baseline, fixed ScoreAug):
- memorization_max at 120 kimg is a logistic curve in log N, least-squares fitted to the published per-size means;
- seed-to-seed noise is beta-binomial, its intra-trial correlation fitted to the published per-seed SDs;
- over training, the curve's N50 grows linearly in kimg from the measured onset intercept, so memorization at
  each log-spaced eval point (7.5 ... 120 kimg) follows, and the 0.1-onset is linear in N (implied slope printed
  beside the measured one). A trial's seed keeps one beta quantile at every eval point (it copies consistently
  more or less than the mean); each eval point draws its own 256 samples.

Compared over --studies simulated studies each (arms baseline and scoreaug_fixed):
- grid: 7 sizes (22 ... 1438) x 3 seeds x 2 arms at 120 kimg, analysed with today's estimator
  (study.stats.scaling.scaling_summary) and with the model (study.stats.memorization_model);
- adaptive: study.stats.design on [10, 1438], 2 slots, trials that reach memorization 0.9 stopped and entered
  right-censored; read at every trial-kimg budget, at the grid's compute, at the grid's precision, and under the
  stopping rule (multiplier interval as narrow as the grid model's median).

    python bench/design_simulation.py [--studies 200] [--seed 0] [--quick]

Prints a table and writes bench/results/design_simulation.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # one core: BLAS threads on 5x5 problems only contend (9x slower fits)

import numpy as np  # noqa: E402
from scipy import optimize, special  # noqa: E402

from study.stats.design import Design, State, StoppingRule, next_round, stop_reason  # noqa: E402
from study.stats.memorization_model import Fit, Interval, Observation, decided, fit  # noqa: E402
from study.stats.scaling import scaling_summary  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("baseline", "scoreaug_fixed")
QUANTITIES = ("n50_baseline", "n50_scoreaug_fixed", "multiplier")
SAMPLES, BUDGET = 256, 120.0
EVAL_KIMG = np.array([7.5, 15.0, 30.0, 60.0, 120.0])
GRID_SIZES, GRID_SEEDS = (22, 45, 90, 180, 360, 719, 1438), 3
RANGE, SLOTS, SATURATION = (10, 1438), 2, 0.9  # SLOTS: trials at once, as on this 2-core machine
# docs/results.md, 3 seeds per size: memorization_max mean and per-seed SD; onset (0.1) slope and intercept.
PUBLISHED = {
    "baseline": {"mean": (0.999, 0.846, 0.398, 0, 0, 0, 0), "sd": (0.002, 0.043, 0.024, 0, 0, 0, 0),
                 "onset_slope": 0.885, "onset_intercept": -5.8},
    "scoreaug_fixed": {"mean": (0.889, 0.154, 0.001, 0, 0, 0, 0), "sd": (0.034, 0.022, 0.002, 0, 0, 0, 0),
                       "onset_slope": 2.63, "onset_intercept": -19.8},
}


@dataclass(frozen=True)
class Curve:
    """One arm's truth: memorization(N, kimg) = sigmoid(-slope (log N - log N50(kimg))),
    N50(kimg) = n50 (kimg - intercept) / (BUDGET - intercept): N50 at the budget is `n50`."""

    n50: float
    slope: float
    intercept: float

    def mean(self, images, kimg) -> np.ndarray:
        n50 = self.n50 * (np.asarray(kimg, float) - self.intercept) / (BUDGET - self.intercept)
        return special.expit(-self.slope * (np.log(np.asarray(images, float))[..., None] - np.log(n50)))

    def onset_slope(self) -> float:
        """kimg per image of the 0.1 onset this curve implies (the 0.1 point is N50(kimg) e^(logit 0.9 / slope))."""
        return (BUDGET - self.intercept) * math.exp(-special.logit(0.9) / self.slope) / self.n50


@dataclass(frozen=True)
class Truth:
    curves: dict
    rho: float

    def target(self, quantity: str) -> float:
        if quantity == "multiplier":
            return self.curves["baseline"].n50 / self.curves["scoreaug_fixed"].n50
        return self.curves[quantity.removeprefix("n50_")].n50


def fit_truth() -> Truth:
    """Least-squares logistic per arm through the published means; rho from the published seed SDs (the
    variance ratio to binomial, averaged over the cells strictly between 0.1 and 0.95, is 1 + (S - 1) rho)."""
    log_n, curves, ratios = np.log(GRID_SIZES), {}, []
    for arm, published in PUBLISHED.items():
        mean = np.array(published["mean"], float)
        result = optimize.least_squares(lambda p, mean=mean: special.expit(-p[1] * (log_n - p[0])) - mean,
                                        [math.log(50), 3.0])
        curves[arm] = Curve(math.exp(result.x[0]), float(result.x[1]), published["onset_intercept"])
        sd = np.array(published["sd"], float)
        inside = (mean > 0.1) & (mean < 0.95)
        ratios += list(sd[inside] ** 2 / (mean[inside] * (1 - mean[inside]) / SAMPLES))
    return Truth(curves, max(float(np.mean(ratios)) - 1, 0.0) / (SAMPLES - 1))


def simulate(truth: Truth, arm: str, images: np.ndarray, rng) -> np.ndarray:
    """(trials, eval points) memorization: one beta quantile per trial (its seed), 256 samples per eval point."""
    mean = np.clip(truth.curves[arm].mean(images, EVAL_KIMG), 1e-12, 1 - 1e-12)
    concentration = 1 / truth.rho - 1
    quantile = rng.random(len(images))[:, None]
    p = special.betaincinv(mean * concentration, (1 - mean) * concentration, quantile)
    return rng.binomial(SAMPLES, np.nan_to_num(p)) / SAMPLES


def run_trial(path: np.ndarray) -> tuple[float, bool, float]:
    """(memorization_max, censored, kimg trained): stopped at the first eval point where it is decided."""
    for i in range(len(path) - 1):
        if decided(path[: i + 1], SATURATION):
            return float(path[: i + 1].max()), True, float(EVAL_KIMG[i])
    return float(path.max()), False, BUDGET


def model_record(result: Fit) -> dict:
    """The three quantities as Intervals from a model fit."""
    record = {f"n50_{arm}": result.n50(arm) if arm in result.arms else Interval(None, None, None, "unresolved")
              for arm in ARMS}
    both = all(arm in result.arms for arm in ARMS)
    missing = Interval(None, None, None, "unresolved")
    record["multiplier"] = result.multiplier("scoreaug_fixed", "baseline") if both else missing
    return record


def today_record(rows: list[dict], n_boot: int) -> dict:
    """The three quantities from study.stats.scaling.scaling_summary (percentile bootstrap over seeds)."""
    summary = scaling_summary(rows, n_boot=n_boot, seed=0)
    record = {f"n50_{row['arm']}": Interval(row["n50"], row["n50_low"], row["n50_high"], row["n50_bound"])
              for row in summary["per_arm"]}
    row = summary["multipliers"][0]
    record["multiplier"] = Interval(row["data_multiplier"], row["low"], row["high"],
                                    "lower" if row["lower_bound"] is not None else None)
    return record


def grid_study(truth: Truth, rng, n_boot: int) -> tuple[dict, dict, float]:
    """One grid study: (today's estimator's record, the model's record, trial-kimg that stopping its saturated
    trials would have saved). The grid itself runs every trial to the end, as today."""
    rows, observations, saved = [], [], 0.0
    for arm in ARMS:
        images = np.repeat(GRID_SIZES, GRID_SEEDS)
        for i, (n, path) in enumerate(zip(images, simulate(truth, arm, images, rng))):
            # onsets left out (None): they do not enter N50 or the multiplier, and their bootstrap doubles the time
            rows.append({"arm": arm, "capacity": None, "images": int(n), "seed": i % GRID_SEEDS,
                         "memorization_max": float(path.max()), "memorization_onset_kimg": None})
            observations.append(Observation(arm, int(n), float(path.max()), seed=i % GRID_SEEDS))
            saved += BUDGET - run_trial(path)[2]
    return today_record(rows, n_boot), model_record(fit(observations)), saved


@dataclass(frozen=True)
class Checkpoint:
    """The adaptive study's answer after a trial finished: compute spent so far (running trials' progress
    included), trials finished, the record, whether the stopping rule would stop here, and how many finished
    trials were stopped early (saturated) with the trial-kimg that saved."""

    kimg: float
    trials: int
    record: dict
    precise: bool
    stopped_early: int = 0
    saved_kimg: float = 0.0


@dataclass
class _Running:
    end: float
    start: float
    placement: object
    observation: Observation


def _start_trials(truth: Truth, state: State, slots: int, fitted: Fit | None, clock: tuple[float, object]) -> list:
    """Place up to `slots` trials and pre-draw each one's run (the design only sees it when it finishes)."""
    now, rng = clock
    started = []
    for placement in next_round(state, slots, fitted):
        memorization, censored, kimg = run_trial(simulate(truth, placement.arm, np.array([placement.images]), rng)[0])
        observation = Observation(placement.arm, placement.images, memorization, censored)
        started.append(_Running(now + kimg, now, placement, observation))
    return started


def adaptive_study(truth: Truth, design: Design, rng, max_kimg: float, rule: StoppingRule,
                   slots: int = SLOTS) -> list[Checkpoint]:
    """Event-driven: `slots` trials at a time; a free slot asks the design for its next trial, with the running
    trials pending; every finished trial refits (warm-started) and leaves a checkpoint."""
    running: list[_Running] = []
    observations: list[Observation] = []
    fitted, now, finished_kimg, checkpoints = None, 0.0, 0.0, []
    while True:
        spent = finished_kimg + sum(now - r.start for r in running)
        if spent < max_kimg and len(running) < slots:
            state = State(design, tuple(observations), tuple(r.placement for r in running))
            running += _start_trials(truth, state, slots - len(running), fitted, (now, rng))
        if not running:
            return checkpoints
        running.sort(key=lambda r: r.end)
        done = running.pop(0)
        now, finished_kimg = done.end, finished_kimg + done.end - done.start
        observations.append(done.observation)
        fitted = fit(observations, slope=design.slope, link=design.link, start=fitted)
        state = State(design, tuple(observations))
        spent = finished_kimg + sum(now - r.start for r in running)
        early = sum(o.censored for o in observations)
        checkpoints.append(Checkpoint(spent, len(observations), model_record(fitted),
                                      stop_reason(state, fitted, rule) == "precise", early,
                                      BUDGET * len(observations) - finished_kimg))


def _covers(interval: Interval, target: float) -> bool:
    """Whether the interval (a one-sided bound counts with its open side) holds the truth; unresolved: no."""
    if interval.low is None and interval.high is None:
        return False
    return (interval.low is None or interval.low <= target) and (interval.high is None or target <= interval.high)


def _width(interval: Interval) -> float:
    """Full width on the log scale; infinite for a one-sided or missing interval."""
    if interval.low is None or interval.high is None or interval.low <= 0:
        return math.inf
    return math.log(interval.high / interval.low)


def summarize(records: list[dict], truth: Truth) -> dict:
    """Per quantity over studies: coverage, median width, spread (SD and IQR/1.349) and median error of the log
    estimate, and the share of studies with a point estimate."""
    out = {}
    for quantity in QUANTITIES:
        intervals = [record[quantity] for record in records]
        target = truth.target(quantity)
        logs = np.log([i.value for i in intervals if i.value is not None]) - math.log(target)
        q25, q75 = np.percentile(logs, [25, 75]) if logs.size else (math.nan, math.nan)
        out[quantity] = {
            "coverage": float(np.mean([_covers(i, target) for i in intervals])),
            "median_log_width": float(np.median([_width(i) for i in intervals])),
            "sd_log": float(np.std(logs, ddof=1)) if logs.size > 1 else math.nan,
            "iqr_sd_log": float((q75 - q25) / 1.349),
            "median_log_error": float(np.median(logs)) if logs.size else math.nan,
            "rmse_log": float(np.sqrt(np.mean(logs ** 2))) if logs.size else math.nan,
            "estimated": logs.size / len(intervals),
        }
    return out


def at_budget(checkpoints: list[Checkpoint], kimg: float) -> Checkpoint:
    """The study's answer had it stopped once `kimg` trial-kimg were spent (the last checkpoint within it)."""
    within = [c for c in checkpoints if c.kimg <= kimg + 1e-9]
    empty = {q: Interval(None, None, None, "unresolved") for q in QUANTITIES}
    return within[-1] if within else Checkpoint(0.0, 0, empty, False)


def matching_budget(runs: list[list[Checkpoint]], reference: dict, truth: Truth, budgets, metric: str) -> dict | None:
    """The smallest budget at which the adaptive design's `metric` (sd_log: spread; rmse_log: spread and bias) is
    at most the reference's for every quantity, with a point estimate in as many studies; None when no budget up
    to the largest reaches it."""
    for kimg in budgets:
        summary = summarize([at_budget(run, kimg).record for run in runs], truth)
        if all(summary[q][metric] <= reference[q][metric] and
               summary[q]["estimated"] >= min(reference[q]["estimated"], 0.99) for q in QUANTITIES):
            return {"kimg": float(kimg), **_effort([at_budget(run, kimg) for run in runs]), "summary": summary}
    return None


def _effort(checkpoints: list[Checkpoint]) -> dict:
    """Mean trials finished, and how many of them and how much trial-kimg early stopping saved."""
    return {"trials": float(np.mean([c.trials for c in checkpoints])),
            "stopped_early": float(np.mean([c.stopped_early for c in checkpoints])),
            "saved_kimg": float(np.mean([c.saved_kimg for c in checkpoints]))}


def stopped(runs: list[list[Checkpoint]], truth: Truth) -> dict:
    """Under the stopping rule: each study's first checkpoint that is precise enough (else its last)."""
    first = [next((c for c in run if c.precise), run[-1]) for run in runs]
    kimg = np.array([c.kimg for c in first])
    return {"median_kimg": float(np.median(kimg)), "mean_kimg": float(kimg.mean()),
            "p90_kimg": float(np.percentile(kimg, 90)), "reached": float(np.mean([c.precise for c in first])),
            **_effort(first), "summary": summarize([c.record for c in first], truth)}


def _truth_json(truth: Truth) -> dict:
    return {"rho": truth.rho, "multiplier": truth.target("multiplier"),
            **{arm: {"n50": c.n50, "slope": c.slope, "onset_intercept": c.intercept,
                     "implied_onset_slope": c.onset_slope(), "published_onset_slope": PUBLISHED[arm]["onset_slope"]}
               for arm, c in truth.curves.items()}}


def simulate_all(studies: int, seed: int, n_boot: int, slots: int = SLOTS) -> dict:
    """Every study of both kinds, and what the comparison reads off them."""
    truth = fit_truth()
    grid_kimg = len(GRID_SIZES) * GRID_SEEDS * len(ARMS) * BUDGET
    grids = [grid_study(truth, np.random.default_rng([seed, i, 0]), n_boot) for i in range(studies)]
    grid_today = summarize([today for today, _, _ in grids], truth)
    grid_model = summarize([model for _, model, _ in grids], truth)
    rule = StoppingRule(target_log_width=grid_model["multiplier"]["median_log_width"])
    design = Design(ARMS, *RANGE)
    runs = [adaptive_study(truth, design, np.random.default_rng([seed, i, 1]), grid_kimg, rule, slots)
            for i in range(studies)]
    budgets = np.arange(BUDGET, grid_kimg + 1, BUDGET / 4)
    at_grid = [at_budget(run, grid_kimg) for run in runs]
    return {
        "truth": _truth_json(truth),
        "settings": {"studies": studies, "seed": seed, "bootstrap": n_boot, "slots": slots, "range": RANGE,
                     "saturation": SATURATION, "grid_kimg": grid_kimg, "design": design.__dict__ | {"arms": ARMS},
                     "stop_target_log_width": rule.target_log_width},
        "grid_today": {"kimg": grid_kimg, "summary": grid_today},
        "grid_model": {"kimg": grid_kimg, "summary": grid_model},
        "grid_saved_kimg_if_saturated_trials_stopped": float(np.mean([saved for _, _, saved in grids])),
        "adaptive_equal_compute": {"kimg": grid_kimg, **_effort(at_grid),
                                   "summary": summarize([c.record for c in at_grid], truth)},
        **{f"adaptive_match_{name}_{metric}": matching_budget(runs, reference, truth, budgets, metric)
           for name, reference in (("today", grid_today), ("model", grid_model)) for metric in ("sd_log", "rmse_log")},
        "adaptive_stopping_rule": stopped(runs, truth),
        "adaptive_curve": [{"kimg": float(k), **summarize([at_budget(run, k).record for run in runs], truth)}
                           for k in budgets],
    }


def _cell(summary: dict) -> str:
    return (f"{summary['coverage']:.2f} | {math.exp(summary['median_log_width']):.3f} | {summary['sd_log']:.4f} | "
            f"{summary['median_log_error']:+.4f}")


def table(result: dict) -> str:
    """Markdown: per analysis, compute against the grid's and per quantity coverage, median width (as the ratio
    high/low), SD of the log estimate and median log error."""
    grid_kimg = result["settings"]["grid_kimg"]
    head = " | ".join(f"{q}: coverage | width (high/low) | SD log | median log error" for q in QUANTITIES)
    lines = [f"| analysis | trial-kimg | x grid | {head} |", "|" + " --- |" * (3 + 4 * len(QUANTITIES))]
    rows = [("grid, today's estimator", result["grid_today"]), ("grid, model", result["grid_model"]),
            ("adaptive at the grid's compute", result["adaptive_equal_compute"]),
            ("adaptive at the SD of grid + today's estimator", result["adaptive_match_today_sd_log"]),
            ("adaptive at the RMSE of grid + today's estimator", result["adaptive_match_today_rmse_log"]),
            ("adaptive at the SD of grid + model", result["adaptive_match_model_sd_log"]),
            ("adaptive at the RMSE of grid + model", result["adaptive_match_model_rmse_log"])]
    stop = result["adaptive_stopping_rule"]
    width = math.exp(result["settings"]["stop_target_log_width"])
    rows.append((f"adaptive, stopping rule (width <= {width:.3f}, reached {stop['reached']:.0%}; mean kimg)",
                 {**stop, "kimg": stop["mean_kimg"]}))
    effort = ["", ("| adaptive analysis | trials finished (mean) | of them stopped early "
                   "| trial-kimg saved by early stops |"), "| --- | --- | --- | --- |"]
    for name, row in rows:
        if row is None:
            lines.append(f"| {name} | not reached within {grid_kimg:,.0f} |" + " - |" * (1 + 4 * len(QUANTITIES)))
            continue
        cells = " | ".join(_cell(row["summary"][q]) for q in QUANTITIES)
        lines.append(f"| {name} | {row['kimg']:,.0f} | {row['kimg'] / grid_kimg:.2f} | {cells} |")
        if "trials" in row:
            effort.append(f"| {name} | {row['trials']:.1f} | {row['stopped_early']:.2f} | {row['saved_kimg']:.0f} |")
    return "\n".join(lines + effort)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="40 studies, 200 bootstrap resamples: a smoke run")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of today's estimator")
    parser.add_argument("--slots", type=int, default=SLOTS, help="adaptive trials at once (a cluster: many)")
    args = parser.parse_args()
    studies, n_boot = (40, 200) if args.quick else (args.studies, args.bootstrap)
    started = time.time()
    result = simulate_all(studies, args.seed, n_boot, args.slots)
    result["seconds"], result["cpu_seconds"] = time.time() - started, time.process_time()
    truth = result["truth"]
    print(f"truth: N50 baseline {truth['baseline']['n50']:.1f}, scoreaug_fixed {truth['scoreaug_fixed']['n50']:.1f}, "
          f"multiplier {truth['multiplier']:.3f}, rho {truth['rho']:.4f}; {studies} studies, {args.slots} slots, "
          f"{result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU")
    print(table(result))
    print(f"\nThe grid would save {result['grid_saved_kimg_if_saturated_trials_stopped']:.0f} of "
          f"{result['settings']['grid_kimg']:,.0f} trial-kimg by stopping trials at memorization >= {SATURATION}.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "design_simulation.json" if args.slots == SLOTS else f"design_simulation_slots{args.slots}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
