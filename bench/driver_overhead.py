"""What the driver spends per trial inside Tune's callbacks, and whether it grows with the number of trials.

Pushes a study's trial events (start, 5 eval points, end) through the real ledger alone, and through the real
MLflow trial callback (which keeps the same ledger) with MLflow on SQLite in a temporary folder. No training and
no Ray cluster: the trials are stub Tune `Trial`s, as in tests/test_trial_failures.py. Per study size it reports
ms per trial over the whole study and over its last 10% of trials (the cost once the study is that large), and
for the callback the share spent inside MLflow's client. Target: the cost per trial at the largest size within
2x of the cost at 100 trials.

    python bench/driver_overhead.py [--trials 100 1000 10000] [--points 5] [--quick] [--ledger-only] [--dir /dev/shm]

Prints a table and writes bench/results/driver_overhead.json (driver_overhead_<tag>.json with --tag).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.tracking import MlflowClient  # noqa: E402
from ray.tune.experiment import Trial  # noqa: E402

from study.contract import REPORTED_METRICS  # noqa: E402
from study.phases.suggestion import Suggestion  # noqa: E402
from study.tracking.ledger import Ledger  # noqa: E402
from trainables.config import load_trial_config  # noqa: E402
from trainables.config_io import flatten  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOTAL_KIMG = 1.0
CLIENT_CALLS = ("create_run", "log_batch", "set_terminated", "search_runs", "get_run", "get_metric_history",
                "log_artifact")


def _suggestions(count: int, base_trial: dict) -> list[Suggestion]:
    """Searched trials of one cell; the trial config is resolved once (the searcher's work, not the callback's)."""
    first = Suggestion(cell="n1000", regime_fraction=1.0, images=1000, role="search", seed=0,
                       overrides={"score_augment.p": 0.3}, optuna_study="bench-n1000", optuna_trial=0)
    first = first.resolved(base_trial)
    return [replace(first, optuna_trial=i) for i in range(count)]


def _points(count: int) -> list[dict]:
    """Eval points carrying every reported metric, evenly up to the trial's budget."""
    return [{**{name: 0.5 + 0.01 * k for name in REPORTED_METRICS}, "kimg": TOTAL_KIMG * k / count}
            for k in range(1, count + 1)]


def _summary(per_trial: list[float]) -> dict:
    """Totals; ms per trial in each tenth of the study in order (a cost that grows with the study rises); and the
    median over the last tenth, the cost once the study is that large (a median: an fsync stalled by other disk
    traffic is one trial's noise, not the ledger's cost)."""
    size = max(1, len(per_trial) // 10)
    tenths = [per_trial[start : start + size] for start in range(0, len(per_trial) - size + 1, size)]
    return {"trials": len(per_trial), "total_s": sum(per_trial), "ms_per_trial": 1000 * sum(per_trial) / len(per_trial),
            "ms_per_trial_last_10pct": 1000 * sum(tenths[-1]) / len(tenths[-1]),
            "median_ms_per_trial_last_10pct": 1000 * statistics.median(tenths[-1]),
            "median_ms_per_trial": 1000 * statistics.median(per_trial),
            "ms_per_trial_by_tenth": [1000 * sum(tenth) / len(tenth) for tenth in tenths]}


def ledger_alone(folder: Path, count: int, points: int, base_trial: dict) -> dict:
    """The ledger's events for each trial, as the callback records them: open, run id, points, end, closed."""
    ledger, results, per_trial = Ledger(folder / "trials_search.jsonl"), _points(points), []
    for i, suggestion in enumerate(_suggestions(count, base_trial)):
        trial_id = f"bench_{i:05d}"
        started = time.perf_counter()
        tags = {"trial_id": trial_id, "phase": "search"}
        ledger.open(trial_id, "search", suggestion, flatten(suggestion.trial), tags)
        ledger.mark(trial_id, run_id=f"run{i:027d}")
        for result in results:
            ledger.add_point(trial_id, result)
        ledger.finish(trial_id, False, "", TOTAL_KIMG, 0.1)
        ledger.mark(trial_id, closed=True)
        per_trial.append(time.perf_counter() - started)
    return {**_summary(per_trial), "log_bytes": ledger.path.stat().st_size}


@contextmanager
def timed_client_calls(spent: dict[str, float]):
    """Time every MLflow client call the callback makes, whatever object makes it."""
    originals = {name: getattr(MlflowClient, name) for name in CLIENT_CALLS}

    def timed(name, call):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - started
        return wrapper

    for name, call in originals.items():
        setattr(MlflowClient, name, timed(name, call))
    try:
        yield spent
    finally:
        for name, call in originals.items():
            setattr(MlflowClient, name, call)


def _callback(folder: Path, base_trial: dict):
    """The driver's MLflow trial callback for the search phase, on a fresh SQLite store with its parent run."""
    from study.tracking.callback import MlflowTrialCallback, TrialRules
    from study.tracking.run_writer import ParentRun

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("bench", artifact_location=(folder / "artifacts").as_uri())
    parent = ParentRun(uri, experiment_id, client.create_run(experiment_id, run_name="bench").info.run_id)
    rules = TrialRules(TOTAL_KIMG, 0.1, base_trial)
    return MlflowTrialCallback(parent, folder / "trials_search.jsonl", "search", rules, folder / "samples")


def with_callback(folder: Path, count: int, points: int, base_trial: dict) -> dict:
    """Each trial's Tune events through the callback: start, its eval points, complete."""
    callback, results, per_trial = _callback(folder, base_trial), _points(points), []
    spent: dict[str, float] = defaultdict(float)
    with timed_client_calls(spent):
        for i, suggestion in enumerate(_suggestions(count, base_trial)):
            trial = Trial("scoreaug_trial", config=suggestion.to_tune(), trial_id=f"bench_{i:05d}", stub=True)
            started = time.perf_counter()
            callback.on_trial_start(0, [], trial)
            for result in results:
                callback.on_trial_result(0, [], trial, result)
            callback.on_trial_complete(0, [], trial)
            per_trial.append(time.perf_counter() - started)
    summary = _summary(per_trial)
    in_mlflow = sum(spent.values())
    return {**summary, "mlflow_share": in_mlflow / summary["total_s"],
            "mlflow_ms_per_trial": {name: 1000 * s / count for name, s in sorted(spent.items())}}


def measure(counts: list[int], points: int, ledger_only: bool, where: str | None) -> dict:
    base_trial = load_trial_config(None, []).model_dump()
    rows = {}
    for count in counts:
        rows[count] = {}
        with tempfile.TemporaryDirectory(dir=where) as folder:
            rows[count]["ledger"] = ledger_alone(Path(folder), count, points, base_trial)
        if not ledger_only:
            with tempfile.TemporaryDirectory(dir=where) as folder:
                rows[count]["callback"] = with_callback(Path(folder), count, points, base_trial)
        print(f"  {count} trials measured", file=sys.stderr, flush=True)
    return rows


def report(rows: dict, points: int) -> dict:
    """The table: mean ms per trial over the study, and the median over its last tenth, per study size."""
    counts = sorted(rows)
    print(f"{'trials':>7}  {'ledger ms/trial':>15}  {'last 10% median':>15}  {'log MB':>7}  {'+MLflow ms/trial':>16}  "
          f"{'last 10% median':>15}  {'in MLflow':>9}")
    for count in counts:
        ledger, callback = rows[count]["ledger"], rows[count].get("callback")
        line = (f"{count:>7}  {ledger['ms_per_trial']:>15.2f}  {ledger['median_ms_per_trial_last_10pct']:>15.2f}  "
                f"{ledger['log_bytes'] / 1e6:>7.1f}")
        if callback:
            line += (f"  {callback['ms_per_trial']:>16.1f}  {callback['median_ms_per_trial_last_10pct']:>15.1f}  "
                     f"{100 * callback['mlflow_share']:>8.0f}%")
        print(line)
    # The largest study's last tenth against the smallest study's whole (ten trials of a 100-trial study are noise).
    largest, smallest = rows[counts[-1]], rows[counts[0]]
    growth = {kind: largest[kind]["median_ms_per_trial_last_10pct"] / smallest[kind]["median_ms_per_trial"]
              for kind in ("ledger", "callback") if kind in smallest}
    for kind, ratio in growth.items():
        print(f"{kind}: median ms per trial, last tenth of {counts[-1]} trials = {ratio:.2f}x that of "
              f"{counts[0]} trials   (target <= 2x)")
    return {"points_per_trial": points, "sizes": {str(c): rows[c] for c in counts}, "growth_last_vs_first": growth,
            "target_growth": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--points", type=int, default=5, help="eval points per trial")
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 trials only")
    parser.add_argument("--ledger-only", action="store_true", help="skip the MLflow callback")
    parser.add_argument("--dir", help="where the temporary study folders go (default: the system's temp folder; "
                                      "on a tmpfs such as /dev/shm every fsync, the ledger's and SQLite's, is free)")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = parser.parse_args()
    counts = [100, 1000] if args.quick else sorted(args.trials)
    result = report(measure(counts, args.points, args.ledger_only, args.dir), args.points)
    result["folder"] = args.dir or tempfile.gettempdir()
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"driver_overhead{'_' + args.tag if args.tag else ''}.json"
    target.write_text(json.dumps(result, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
