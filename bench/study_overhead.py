"""What the study machinery costs on top of training: wall time against in-trial training time.

Runs a fixed small study (digits, 2 regimes x 3 trials, no confirmation, no early stopping) and reads
its results.parquet. Reports:
- overhead ratio = study wall time / (sum of in-trial training time / concurrency)   (target <= 1.15)
- start-up cost per trial = first training step - trial start, as seen by the driver (target <= 3 s)

    python bench/study_overhead.py

Prints a table and writes bench/results/study_overhead.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402

from study.config import load_study_config  # noqa: E402
from study.runner import run_study  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STUDY = [
    "name=overhead", "regimes=[0.25,1.0]", "search.trials_per_regime=3", "search.metric=test_loss", "confirm.seeds=0",
    "scheduler.kind=none", "trial.eval.fid=false", "trial.train.total_kimg=4", "trial.eval.every_kimg=2",
    "resources.max_concurrent=2",
]


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = load_study_config(None, STUDY + [f"output={folder}/study"])
        started = time.time()
        output = run_study(config, log=lambda *_: None)
        wall = time.time() - started
        rows = pq.read_table(output / "results.parquet").to_pylist()
    concurrency = config.resources.max_concurrent
    train = sum(r["train_time_s"] or 0.0 for r in rows)
    startup = [r["startup_s"] for r in rows if r["startup_s"] is not None]
    result = {
        "trials": len(rows), "concurrency": concurrency, "study_wall_s": wall, "sum_train_s": train,
        "overhead_ratio": wall / (train / concurrency), "target_ratio": 1.15,
        "startup_s_median": statistics.median(startup), "startup_s_max": max(startup), "startup_s": startup, "target_startup_s": 3.0,
        "trial_wall_s_median": statistics.median(r["wall_time_s"] for r in rows),
    }
    print(f"{'trials':24s} {result['trials']}")
    print(f"{'study wall time':24s} {wall:8.1f} s")
    print(f"{'training / concurrency':24s} {train / concurrency:8.1f} s")
    print(f"{'overhead ratio':24s} {result['overhead_ratio']:8.2f}   (target <= 1.15)")
    print(f"{'start-up per trial':24s} {result['startup_s_median']:8.1f} s median, {result['startup_s_max']:.1f} s max   (target <= 3 s)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "study_overhead.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS / 'study_overhead.json'}")


if __name__ == "__main__":
    main()
