"""The adaptive design as Tune sees it: a searcher that places sizes from the results so far, a scheduler that stops
trials whose answer is decided, and the design's end read back from the ledger alone. No Ray cluster: results
are fed as Tune would feed them, from a known truth."""

import math

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from study.config import load_study_config
from study.phases.adaptive import AdaptiveSearcher, design_finished, design_plan, size_range
from study.phases.schedulers import DecidedStopper
from study.phases.suggestion import Suggestion

TRUTH = {"baseline": 40.0, "scoreaug_fixed": 15.0}  # N50 of each arm
TOTAL_KIMG = 25.0


def _config(*sets):
    return load_study_config(None, ["design={max_trials: 16}", "confirm.arms={scoreaug_fixed: {score_augment.p: 0.5}}",
                                    *sets])


def _memorization(suggestion: Suggestion) -> float:
    return 1 / (1 + math.exp(3 * (math.log(suggestion.images) - math.log(TRUTH[suggestion.role]))))


def _run(searcher: AdaptiveSearcher, slots: int = 2) -> list[Suggestion]:
    """Two trials at a time, the oldest ending first; a trial copying 90% ends early, as the scheduler stops it."""
    placed, live, number = [], [], 0
    while True:
        while len(live) < slots:
            config = searcher.suggest(f"t{number}")
            if config is None or config == searcher.FINISHED:
                break
            live.append((f"t{number}", Suggestion.from_tune(config)))
            number += 1
        if not live:
            return placed
        trial_id, suggestion = live.pop(0)
        placed.append(suggestion)
        m = _memorization(suggestion)
        searcher.on_trial_complete(trial_id, {"kimg": 10.0 if m >= 0.9 else TOTAL_KIMG, "memorization": m})


def test_the_design_finds_both_n50s_and_stops_within_its_budget():
    config = _config()
    searcher = AdaptiveSearcher(config, design_plan(config, concurrency=2))
    placed = _run(searcher)
    assert searcher.finished and 4 <= len(placed) <= 16
    low, high = size_range(config)
    assert (low, high) == (10, 1438)  # one image per class of digits, up to the pool
    assert all(low <= s.images <= high and s.placed_by in ("bracket", "refine", "confirm") for s in placed)
    assert [s.round for s in placed] == sorted(s.round for s in placed) and placed[0].round == 1
    assert {s.role for s in placed} == {"baseline", "scoreaug_fixed"}
    assert placed[0].trial["score_augment"]["p"] == 0.0 and placed[1].trial["score_augment"]["p"] == 0.5
    seeds = {}
    for s in placed:  # a size placed again trains with a fresh seed
        seeds.setdefault((s.role, s.images), []).append(s.seed)
    assert all(v == list(range(len(v))) for v in seeds.values())


def test_placement_is_deterministic_given_the_results_so_far():
    config = _config()
    first, second = (_run(AdaptiveSearcher(config, design_plan(config, concurrency=2))) for _ in range(2))
    assert [s.to_tune() for s in first] == [s.to_tune() for s in second]


def test_a_stopped_trial_enters_the_fit_censored_and_a_failed_one_counts_against_the_budget():
    config = _config()
    searcher = AdaptiveSearcher(config, design_plan(config, concurrency=2))
    a, b = (Suggestion.from_tune(searcher.suggest(t)) for t in ("a", "b"))
    searcher.on_trial_result("a", {"kimg": 2.5, "memorization": 0.95})
    searcher.on_trial_complete("a", {"kimg": 5.0, "memorization": 0.92})
    searcher.on_trial_complete("b", {"kimg": 3.0, "error_kind": "data", "error": "x"})
    [observation] = searcher.capacities[0].observations
    assert (observation.arm, observation.images, observation.memorization, observation.censored) == (a.role, a.images, 0.95, True)
    assert searcher.capacities[0].failed == 1 and searcher.capacities[0].kimg == [5.0]


def test_the_scheduler_stops_a_trial_once_it_copies_the_saturation_level():
    stopper = DecidedStopper(saturation=0.9)
    trial = Trial("scoreaug_trial", config=Suggestion(cell="n10", regime_fraction=1.0).to_tune(), trial_id="t", stub=True)
    decisions = [stopper.on_trial_result(None, trial, {"kimg": k, "memorization": m})
                 for k, m in ((2.5, 0.3), (5.0, 0.91), (10.0, 0.5))]
    assert decisions == [TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.STOP]  # the maximum decides


def test_the_design_end_is_read_from_the_ledger():
    config = _config()
    plan = design_plan(config, concurrency=2)
    placed = _run(AdaptiveSearcher(config, plan))
    records = {}
    for number, s in enumerate(placed):
        m = _memorization(s)
        kimg = 10.0 if m >= 0.9 else TOTAL_KIMG
        records[f"t{number}"] = {"started": number, "suggestion": s.to_tune(), "status": "completed" if kimg == TOTAL_KIMG else "early_stopped",
                                 "history": [{"kimg": kimg, "memorization": m}], "last_result": {"kimg": kimg, "memorization": m}}
    assert design_finished(config, plan, records)
    cut = dict(list(records.items())[:-2])
    assert not design_finished(config, plan, cut)  # a study interrupted there has trials left to place
    unended = {**records, "t0": {k: v for k, v in records["t0"].items() if k != "status"}}
    assert not design_finished(config, plan, unended)


@pytest.mark.parametrize("sets, message", [
    (["design={max_trials: 4}", "confirm.arms={}"], "design needs an arm beside the baseline"),
    (["design={min_images: 50, max_images: 40}", "confirm.arms={f: {score_augment.p: 0.5}}"], "must be below design.max_images"),
    (["design={}", "confirm.arms={f: {score_augment.p: 0.5}}", "trial.eval.fid=false", "search.metric=test_loss"],
     "design needs trial.eval.fid: true"),
])
def test_a_design_config_that_cannot_run_is_refused(sets, message):
    from study.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_study_config(None, sets)


def test_an_arm_is_never_starved_when_there_are_more_arms_than_slots():
    config = _config("confirm.arms={scoreaug_fixed: {score_augment.p: 0.5}, other: {score_augment.p: 0.3}}")
    searcher = AdaptiveSearcher(config, design_plan(config, concurrency=2))
    TRUTH["other"] = 25.0
    try:
        placed = _run(searcher)
    finally:
        del TRUTH["other"]
    first_four = [s.role for s in placed[:4]]
    assert {"baseline", "scoreaug_fixed", "other"} <= set(first_four), first_four


def test_an_arm_whose_every_trial_fails_stops_being_placed_and_the_rest_goes_on():
    """Every trial of one arm diverges: after ARM_FAILURE_LIMIT failures it is no longer placed, the other two arms
    still reach their answer, and the ledger replay (design_finished) agrees that the design is over."""
    from study.phases.adaptive import ARM_FAILURE_LIMIT

    config = _config("confirm.arms={scoreaug_fixed: {score_augment.p: 0.5}, broken: {score_augment.p: 0.3}}")
    plan = design_plan(config, concurrency=2)
    searcher, records, number, live = AdaptiveSearcher(config, plan), {}, 0, []
    while True:
        while len(live) < 2 and (suggested := searcher.suggest(f"t{number}")) not in (None, searcher.FINISHED):
            live.append((f"t{number}", Suggestion.from_tune(suggested)))
            number += 1
        if not live:
            break
        trial_id, s = live.pop(0)
        m = _memorization(s) if s.role != "broken" else None
        result = {"kimg": 0.5, "error_kind": "diverged", "error": "loss is nan"} if m is None else \
            {"kimg": 10.0 if m >= 0.9 else TOTAL_KIMG, "memorization": m}
        searcher.on_trial_complete(trial_id, result)
        status = "diverged" if m is None else ("completed" if result["kimg"] == TOTAL_KIMG else "early_stopped")
        records[trial_id] = {"started": len(records), "suggestion": s.to_tune(), "status": status,
                             "history": [] if m is None else [result], "last_result": result}
    roles = [Suggestion.from_tune(r["suggestion"]).role for r in records.values()]
    assert roles.count("broken") == ARM_FAILURE_LIMIT
    assert roles.count("baseline") >= 2 and roles.count("scoreaug_fixed") >= 2
    assert searcher.finished and searcher.capacities[0].given_up() == {"broken"}
    assert design_finished(config, plan, records)
