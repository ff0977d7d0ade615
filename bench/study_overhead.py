"""What the study machinery costs on top of training: wall time against in-trial time, and per-trial start-up.

Runs a fixed small study (digits, 2 regimes x 4 trials, 1 worker per trial, 2 at once, no confirmation, no
early stopping) and reads its results.parquet. Reports:
- overhead ratio = study wall time / (sum of in-trial training time / concurrency)   (target <= 1.15)
  and the same against in-trial loop time (training plus the trial's own evaluations), which isolates the
  machinery (Tune, Train, MLflow, Optuna, start-up) from evaluation work the study asked for;
- start-up per trial = first training step - trial start, as seen by the driver (target <= 3 s), split into
  cold trials (the first in each trial process: process start and imports) and warm ones (a reused process).

    python bench/study_overhead.py [--set resources.reuse_trial_process=false ...]

Prints a table and writes bench/results/study_overhead.json (study_overhead_<tag>.json with --tag).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402

from study.config import DEFAULT_CONFIG, load_study_config  # noqa: E402
from study.driver.runner import run_study  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STUDY = [
    "name=overhead", "regimes=[0.25,1.0]", "search.trials_per_regime=4", "search.metric=test_loss", "confirm.seeds=0",
    "scheduler.kind=none", "trial.eval.fid=false", "trial.train.total_kimg=8", "trial.eval.every_kimg=4",
    "resources.num_workers=1", "resources.max_concurrent=2",
]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="extra study overrides")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = load_study_config(str(DEFAULT_CONFIG.with_name("demo_grid.yaml")), STUDY + args.set + [f"output={folder}/study"])
        started = time.time()
        output = run_study(config, log=lambda *_: None)
        wall = time.time() - started
        rows = pq.read_table(output / "results.parquet").to_pylist()
    concurrency = config.resources.max_concurrent
    train = sum(r["train_time_s"] or 0.0 for r in rows)
    loop = sum(r["loop_time_s"] or 0.0 for r in rows)
    startup = [r["startup_s"] for r in rows if r["startup_s"] is not None]
    # Tune starts the first `concurrency` trials in fresh processes; later trials reuse them (when configured).
    by_start = sorted((r for r in rows if r["startup_s"] is not None), key=lambda r: r["trial_started_at"])
    cold = [r["startup_s"] for r in by_start[:concurrency]]
    warm = [r["startup_s"] for r in by_start[concurrency:]]
    result = {
        "overrides": args.set, "trials": len(rows), "concurrency": concurrency, "study_wall_s": wall,
        "sum_train_s": train, "sum_loop_s": loop,
        "overhead_ratio": wall / (train / concurrency), "overhead_ratio_vs_loop": wall / (loop / concurrency),
        "target_ratio": 1.15,
        "startup_s_median": _median(startup), "startup_s_cold_median": _median(cold), "startup_s_warm_median": _median(warm),
        "startup_s_max": max(startup), "startup_s": startup, "target_startup_s": 3.0,
        "trial_wall_s_median": statistics.median(r["wall_time_s"] for r in rows),
    }
    rows_out = [
        ("trials", f"{len(rows)} ({concurrency} at once)"),
        ("study wall time", f"{wall:.1f} s"),
        ("training / concurrency", f"{train / concurrency:.1f} s"),
        ("loop / concurrency", f"{loop / concurrency:.1f} s   (training + the trials' evaluations)"),
        ("overhead ratio", f"{result['overhead_ratio']:.2f} vs training, {result['overhead_ratio_vs_loop']:.2f} vs loop   (target <= 1.15)"),
        ("start-up per trial", f"{result['startup_s_median']:.1f} s median, {result['startup_s_max']:.1f} s max   (target <= 3 s)"),
        ("  cold (new process)", f"{result['startup_s_cold_median']:.1f} s median over {len(cold)}"),
        ("  warm (reused)", f"{result['startup_s_warm_median']:.1f} s median over {len(warm)}" if warm else "none"),
    ]
    for name, value in rows_out:
        print(f"{name:24s} {value}")
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"study_overhead{'_' + args.tag if args.tag else ''}.json"
    target.write_text(json.dumps(result, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
