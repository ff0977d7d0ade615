"""Training throughput of the real worker loop: in this process, in a Ray Train worker, and in a Tune trial.

All three run `trainables.loop.run_trial` with the same config and report the loop's own `img_per_sec`
(training steps only, evaluation excluded), so the ratios isolate what Ray adds to the training path:
- in-process: `run_trial` with a `LocalSession`, in this process (the `trainables.train` command);
- Ray Train worker group: a `TorchTrainer` with one 2-CPU worker (how a multi-worker trial trains);
- Tune trial process: the study's own trainable (`study.trial.make_trainable`) under a Tuner, where a
  1-worker trial trains in its trial process through Ray Train's local mode (how study trials train).

Each run has several eval intervals; the first is dropped (a fresh process warms its allocator and oneDNN
primitives there, a start-up cost that `bench/study_overhead.py` measures), and the rest give the
steady-state rate. Each round runs the three modes back to back, so the host's drift (tens of percent
between minutes here) hits them alike; a ratio is the median over rounds of the round's ratio to
in-process. Target: Ray at least 0.97 of in-process.

    python bench/trainer_throughput.py            # digits (~1 M params) and CIFAR-sized synthetic, ~26 min
    python bench/trainer_throughput.py --quick    # a smoke run

Prints a table and writes bench/results/trainer_throughput.json. The EDM reference comparisons
(EDM's own step, side by side on this machine) live in bench/network_step.py.
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

from study.config import ResourcesConfig  # noqa: E402
from trainables.config import load_trial_config  # noqa: E402
from trainables.loop import run_trial  # noqa: E402
from trainables.session import LocalSession  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 0.97
INTERVALS = 4  # eval intervals per run; the first is warm-up

CASES = {
    # name: (overrides, kimg per eval interval, the same for --quick)
    "digits (8x8x1, preset digits, batch 128)": (
        ["dataset=digits", "model.preset=digits", "train.batch_size=128"], 2.048, 0.512),
    "cifar-sized (32x32x3 synthetic, preset mnist, batch 32)": (
        ["dataset=synthetic", "model.preset=mnist", "train.batch_size=32"], 0.192, 0.064),
}
COMMON = ["eval.fid=false", "eval.loss_images=8", "eval.num_samples=8", "eval.grid_images=4", "eval.sampler_steps=2",
          "runtime.threads=2", "train.lr_rampup_kimg=0"]
WORKER = ResourcesConfig(num_workers=1, cpus_per_worker=2, max_failures=0).model_dump()  # one 2-CPU worker


def _config(overrides: list[str], interval_kimg: float, intervals: int = INTERVALS):
    return load_trial_config(None, COMMON + overrides + [f"train.total_kimg={interval_kimg * intervals}",
                                                         f"eval.every_kimg={interval_kimg}"])


def steady_rate(rates: list[float]) -> float:
    """img/s over the intervals after the first: equal image counts, so the harmonic mean of their rates."""
    rest = rates[1:] or rates
    return len(rest) / sum(1.0 / r for r in rest)


def paired_ratio(rates: list[float], baseline: list[float]) -> float:
    """Median over rounds of rate / the same round's in-process rate: the host's drift between rounds cancels."""
    return statistics.median(r / b for r, b in zip(rates, baseline))


def in_process(config, _storage: str) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        return [r["img_per_sec"] for r in run_trial(config, LocalSession(Path(folder)), log=lambda _: None)]


def in_ray_train(config, storage: str) -> list[float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trainables.ray_worker import train_worker

    trainer = TorchTrainer(train_worker, train_loop_config=config.model_dump(),
                           scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
                           run_config=RunConfig(name=f"bench-{time.time_ns()}", storage_path=storage))
    return trainer.fit().metrics_dataframe["img_per_sec"].dropna().tolist()


def in_tune_trial(config, storage: str) -> list[float]:
    from ray import tune

    from study.driver.trainable import make_trainable, trial_resources

    trainable = tune.with_resources(make_trainable(config.model_dump(), WORKER, storage), trial_resources(WORKER))
    tuner = tune.Tuner(trainable, param_space={"regime_fraction": config.regime_fraction, "seed": config.seed,
                                               "overrides": {}},
                       run_config=tune.RunConfig(name=f"bench-{time.time_ns()}", storage_path=storage, verbose=0))
    return tuner.fit()[0].metrics_dataframe["img_per_sec"].dropna().tolist()


MODES = {"in-process": in_process, "Ray Train worker group": in_ray_train, "Tune trial process": in_tune_trial}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds, one run of each mode per round")
    parser.add_argument("--case", choices=["digits", "cifar"], action="append", help="run only these cases")
    args = parser.parse_args()
    import ray

    runs = 1 if args.quick else args.runs
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        for name, (overrides, interval, quick_interval) in CASES.items():
            if args.case and not name.startswith(tuple(args.case)):
                continue
            config = _config(overrides, quick_interval if args.quick else interval)
            in_process(_config(overrides, config.train.batch_size * 3 / 1000, 1), storage)  # caches this process
            steady = {mode: [] for mode in MODES}
            intervals = {mode: [] for mode in MODES}
            for _ in range(runs):
                for mode, run in MODES.items():
                    rates = run(config, storage)
                    intervals[mode].append(rates)
                    steady[mode].append(steady_rate(rates))
            median = {mode: statistics.median(values) for mode, values in steady.items()}
            rows.append({
                "case": name, "kimg_per_interval": config.eval.every_kimg, "intervals": INTERVALS,
                "steady_img_per_sec": steady, "interval_img_per_sec": intervals, "median_img_per_sec": median,
                "ratio_ray_train": paired_ratio(steady["Ray Train worker group"], steady["in-process"]),
                "ratio_tune_trial": paired_ratio(steady["Tune trial process"], steady["in-process"]),
            })
    ray.shutdown()

    print(f"{'case':56s} {'in-process':>11s} {'Ray Train':>10s} {'ratio':>6s} {'Tune trial':>11s} {'ratio':>6s}")
    for row in rows:
        m = row["median_img_per_sec"]
        print(f"{row['case']:56s} {m['in-process']:11.1f} {m['Ray Train worker group']:10.1f} "
              f"{row['ratio_ray_train']:6.3f} {m['Tune trial process']:11.1f} {row['ratio_tune_trial']:6.3f}")
    print(f"img/s: median over {runs} round(s) of the steady-state rate; ratio: median of the per-round ratios "
          f"to in-process; target >= {TARGET_RATIO}")
    RESULTS.mkdir(exist_ok=True)
    suffix = ("_" + "_".join(args.case) if args.case else "") + ("_quick" if args.quick else "")
    out = RESULTS / f"trainer_throughput{suffix}.json"
    out.write_text(json.dumps({"target_ratio": TARGET_RATIO, "threads": 2, "runs": runs, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
