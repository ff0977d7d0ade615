"""What share of a scaling-study trial its eval points take: one in-process trial at the study's settings.

The scaling study evaluates on a log schedule with sample metrics (FID, fid_test, memorization, leakage)
at every point, so that memorization onset can be located; this measures what that costs. Target: eval
points at most 15% of the trial's wall time. The first point includes building the FID evaluator
(reference statistics come from the on-disk cache once computed).

    python bench/eval_share.py            # 120 kimg, log schedule 10, 20, 40, 80, 120; ~2-3 min on 2 CPU cores
    python bench/eval_share.py --quick    # 20 kimg

Prints a table and writes bench/results/eval_share.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.config import load_trial_config  # noqa: E402
from trainables.loop import run_trial  # noqa: E402
from trainables.session import LocalSession  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "eval_share.json"
TARGET_SHARE = 0.15
# The scaling study's trial (study/configs/scaling.yaml) at 72 digits, digits-tiny; eval sizes as study/configs/demo.yaml.
STUDY_TRIAL = [
    "dataset=digits", "model.preset=digits-tiny", "regime_images=72", "train.batch_size=64", "train.lr=0.002",
    "train.lr_rampup_kimg=0.5", "eval.schedule=log", "eval.fid_at=every",
    "eval.num_samples=500", "eval.sampler_steps=12", "eval.loss_images=128", "eval.grid_images=64", "runtime.threads=1",
]


def settings(total_kimg: float, first_kimg: float) -> list[str]:
    return STUDY_TRIAL + [f"train.total_kimg={total_kimg}", f"eval.every_kimg={first_kimg}"]


def timed_trial(overrides: list[str]) -> tuple[float, list[dict]]:
    """Wall seconds of the whole trial (start-up included) and its reports."""
    config = load_trial_config(None, overrides)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        reports = run_trial(config, LocalSession(Path(folder)), log=lambda _: None)
    return time.perf_counter() - started, reports


def summary(wall_seconds: float, reports: list[dict]) -> dict:
    eval_seconds = sum(r["eval_seconds"] for r in reports)
    points = [{key: r.get(key) for key in ("kimg", "eval_seconds", "sample_eval_seconds", "memorization", "fid", "fid_test")}
              for r in reports]
    return {"trial_seconds": wall_seconds, "eval_seconds": eval_seconds, "share": eval_seconds / wall_seconds,
            "target_share": TARGET_SHARE, "within_target": eval_seconds / wall_seconds <= TARGET_SHARE, "points": points}


def print_table(result: dict) -> None:
    print(f"{'kimg':>6s} {'eval s':>7s} {'sample s':>8s} {'memorization':>12s} {'fid':>8s} {'fid_test':>8s}")
    for p in result["points"]:
        print(f"{p['kimg']:6.2f} {p['eval_seconds']:7.2f} {p['sample_eval_seconds']:8.2f} {p['memorization']:12.3f}"
              f" {p['fid']:8.2f} {p['fid_test']:8.2f}")
    print(f"\ntrial {result['trial_seconds']:.1f} s, eval points {result['eval_seconds']:.1f} s: share {result['share']:.1%}"
          f" (target at most {TARGET_SHARE:.0%}: {'met' if result['within_target'] else 'missed'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 kimg instead of 120")
    parser.add_argument("--first-kimg", type=float, default=10.0,
                        help="first eval point of the log schedule (eval.every_kimg); 5 measured 16.6%%, 10 is the default")
    args = parser.parse_args()
    total_kimg = 20 if args.quick else 120

    result = summary(*timed_trial(settings(total_kimg, args.first_kimg)))
    print(f"eval share: digits, 72 images, digits-tiny, {total_kimg} kimg, log schedule from {args.first_kimg:g} kimg, "
          "sample metrics at every point")
    print_table(result)

    environment = {"threads": 1, "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"environment": environment, "settings": settings(total_kimg, args.first_kimg),
                                   **result}, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
