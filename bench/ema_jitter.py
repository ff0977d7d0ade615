"""How much FID jitters from one checkpoint to the next, with the old short EMA and with EDM's EMA.

A curve of FID (or memorization) against kimg is only readable when consecutive checkpoints differ by less
than seeds do. With a 0.5 kimg half-life the EMA averages only the last few hundred steps; EDM's rule
(half-life min(500 kimg, 0.05 x images seen)) averages the last 5% of training. Both settings train the same
regime with 3 training seeds and the same sampler seeds; per setting this reports the mean over seeds of
|FID(last) - FID(previous)| (jitter), its signed mean (change), and the sample std over seeds of the final
FID (spread).

    python bench/ema_jitter.py            # 2 x 3 trials of 60 kimg, 2 at a time, ~5 min on 2 CPU cores
    python bench/ema_jitter.py --quick    # 2 x 2 trials of 6 kimg, fewer samples

Prints a table and writes bench/results/ema_jitter.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.config import load_trial_config  # noqa: E402
from trainables.loop import run_trial  # noqa: E402
from trainables.session import LocalSession  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ema_jitter.json"
PARALLEL_RUNS = 2  # one per core
SETTINGS = {
    "old (0.5 kimg)": ["train.ema_halflife_kimg=0.5", "train.ema_rampup_ratio=0.05"],
    "edm (500 kimg)": ["train.ema_halflife_kimg=500", "train.ema_rampup_ratio=0.05"],
}
TRIAL = [
    "dataset=digits", "model.preset=digits-tiny", "regime_images=288", "train.batch_size=64", "train.lr=0.002",
    "train.lr_rampup_kimg=0.5", "eval.fid_at=every", "eval.sampler_steps=12", "eval.loss_images=128", "runtime.threads=1",
]
FULL = {"seeds": 3, "overrides": ["train.total_kimg=60", "eval.at_kimg=[40, 50]", "eval.num_samples=500"]}
QUICK = {"seeds": 2, "overrides": ["train.total_kimg=6", "eval.at_kimg=[4, 5]", "eval.num_samples=200"]}


def fid_curve(overrides: list[str]) -> list[dict]:
    """One trial in a temporary folder: kimg, fid and memorization at each eval point."""
    config = load_trial_config(None, overrides)
    with tempfile.TemporaryDirectory() as folder:
        reports = run_trial(config, LocalSession(Path(folder)), log=lambda _: None)
    return [{"kimg": r["kimg"], "fid": r["fid"], "memorization": r["memorization"]} for r in reports]


def summarize(curves: list[list[dict]]) -> dict:
    """Jitter (last step of each curve, averaged over seeds) against the seed spread of the final FID; the signed
    mean change tells a trend (all seeds still improving) from noise."""
    last_steps = [c[-1]["fid"] - c[-2]["fid"] for c in curves]
    jitter = statistics.mean(abs(step) for step in last_steps)
    spread = statistics.stdev(c[-1]["fid"] for c in curves)
    return {"final_fid_mean": statistics.mean(c[-1]["fid"] for c in curves), "jitter": jitter, "mean_change": statistics.mean(last_steps),
            "seed_spread": spread, "jitter_under_spread": jitter < spread}


def print_tables(results: dict) -> None:
    kimgs = [point["kimg"] for point in next(iter(results.values()))["curves"][0]]
    print(f"{'setting':15s} {'seed':>4s} " + " ".join(f"{'fid@' + format(k, 'g'):>9s}" for k in kimgs) + f" {'memorization':>12s}")
    for name, result in results.items():
        for seed, curve in enumerate(result["curves"]):
            print(f"{name:15s} {seed:4d} " + " ".join(f"{p['fid']:9.2f}" for p in curve) + f" {curve[-1]['memorization']:12.3f}")
    print(f"\n{'setting':15s} {'final fid':>9s} {'jitter':>7s} {'change':>7s} {'spread':>7s} {'jitter < spread':>15s}")
    for name, result in results.items():
        s = result["summary"]
        print(f"{name:15s} {s['final_fid_mean']:9.2f} {s['jitter']:7.2f} {s['mean_change']:+7.2f} {s['seed_spread']:7.2f}"
              f" {str(s['jitter_under_spread']):>15s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: shorter trials, fewer seeds and samples")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL

    runs = {(name, seed): TRIAL + plan["overrides"] + ema + [f"seed={seed}"]
            for name, ema in SETTINGS.items() for seed in range(plan["seeds"])}
    started = time.perf_counter()
    with ProcessPoolExecutor(PARALLEL_RUNS, mp_context=multiprocessing.get_context("spawn")) as pool:
        curves = dict(zip(runs, pool.map(fid_curve, runs.values())))
    results = {name: {"overrides": ema, "curves": [curves[name, seed] for seed in range(plan["seeds"])]} for name, ema in SETTINGS.items()}
    for result in results.values():
        result["summary"] = summarize(result["curves"])

    print(f"EMA jitter: digits, 288 images, digits-tiny, {plan['overrides']}, fixed sampler seeds, {plan['seeds']} training seeds")
    print_tables(results)
    print(f"\n{len(runs)} trials, {PARALLEL_RUNS} at a time: {time.perf_counter() - started:.0f} s")

    environment = {"threads_per_run": 1, "parallel_runs": PARALLEL_RUNS, "torch": torch.__version__, "machine": platform.machine()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"environment": environment, "trial": TRIAL + plan["overrides"], "settings": results}, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
