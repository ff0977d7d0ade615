"""How fast FID is measured: feature images/s of each feature space, and the time of one FID
evaluation (fid + fid_test, references cached) at the settings trials use.

    python bench/fid_throughput.py [--device cpu] [--threads 2] [--repeats 3]

Prints a table and writes bench/results/fid_throughput.json. Inception-v3 is measured only where
its weights are found (see trainables.fid.find_inception_weights), on 64 images.
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

from trainables import fid  # noqa: E402
from trainables.data import load_dataset  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fid_throughput.json"
THROUGHPUT_CASES = (("digits-cnn", "digits", 2048), ("mnist-cnn", "mnist5k", 2048), ("inception-v3", "mnist5k", 64))
EVALUATION_CASES = (("digits", "digits-cnn", 500), ("mnist5k", "mnist-cnn", 1000))


def best_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def generated_like(images: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """`count` real images drawn with replacement, with Gaussian pixel noise: stand-ins for samples."""
    generator = torch.Generator().manual_seed(seed)
    picked = images[torch.randint(len(images), (count,), generator=generator)].float()
    return (picked + 16.0 * torch.randn(picked.shape, generator=generator)).round().clamp(0, 255).to(torch.uint8)


def throughput(space_name: str, dataset_name: str, count: int, device: str, repeats: int) -> dict:
    try:
        space = fid.get_feature_space(space_name, device=device)
    except fid.FeatureWeightsError as error:
        return {"feature_space": space_name, "skipped": str(error)}
    images = generated_like(load_dataset(dataset_name).test, count)
    space.features(images[: min(count, 8)])  # warm-up
    seconds = best_seconds(lambda: space.features(images), repeats)
    return {"feature_space": space_name, "images": count, "resolution": images.shape[-1], "seconds": seconds, "images_per_s": count / seconds}


def evaluation(dataset_name: str, space_name: str, count: int, device: str, repeats: int) -> dict:
    dataset = load_dataset(dataset_name)
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        evaluator = fid.FidEvaluator(dataset, space_name, count, cache_dir=cache_dir, device=device)
        cold_seconds = time.perf_counter() - start
        start = time.perf_counter()
        fid.FidEvaluator(dataset, space_name, count, cache_dir=cache_dir, device=device)
        cached_seconds = time.perf_counter() - start
    samples = generated_like(dataset.test, count)
    seconds = best_seconds(lambda: evaluator.evaluate(samples), repeats)
    result = evaluator.evaluate(samples)
    return {
        "dataset": dataset_name,
        "feature_space": space_name,
        "num_samples": count,
        "evaluate_seconds": seconds,
        "build_cold_seconds": cold_seconds,
        "build_cached_seconds": cached_seconds,
        "fid_floor": evaluator.floor(),
        "floor_num_samples": evaluator.floor_num_samples,
        "fid_noisy_real": result["fid"],
        "fid_test_noisy_real": result["fid_test"],
    }


def demo_trial(steps_only: int | None = None) -> dict:
    """One trial of the demo study (full training pool), in-process: wall time, time spent on sample metrics, FIDs.

    With `steps_only`, the trial stops after that many optimizer steps: an (almost) untrained model's FID.
    """
    from study.config import load_study_config
    from trainables.loop import run_trial
    from trainables.session import LocalSession

    trial = load_study_config().trial
    if steps_only:
        kimg = steps_only * trial.train.batch_size / 1000
        trial = trial.model_copy(update={"train": trial.train.model_copy(update={"total_kimg": kimg}),
                                         "eval": trial.eval.model_copy(update={"every_kimg": kimg})})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        final = run_trial(trial, LocalSession(Path(folder)), log=lambda _: None)[-1]
    wall = time.perf_counter() - started
    return {"kimg": final["kimg"], "trial_seconds": wall, "sample_eval_seconds": final["sample_eval_seconds"],
            "share": final["sample_eval_seconds"] / wall, "fid": final["fid"], "fid_test": final["fid_test"],
            "fid_floor": final["fid_floor"], "num_samples": trial.eval.num_samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rates = [throughput(*case, args.device, args.repeats) for case in THROUGHPUT_CASES]
    evaluations = [evaluation(*case, args.device, args.repeats) for case in EVALUATION_CASES]

    print(f"feature throughput ({args.device}, {args.threads} threads, best of {args.repeats})")
    print(f"{'feature space':14s} {'images':>7s} {'res':>4s} {'images/s':>10s}")
    for row in rates:
        if "skipped" in row:
            print(f"{row['feature_space']:14s} skipped: weights not found")
        else:
            print(f"{row['feature_space']:14s} {row['images']:7d} {row['resolution']:4d} {row['images_per_s']:10.1f}")
    print("\none FID evaluation (fid + fid_test, references cached)")
    print(f"{'dataset':8s} {'features':11s} {'N':>5s} {'evaluate s':>10s} {'cold build s':>12s} {'cached build s':>14s} {'floor':>8s} {'floor N':>7s} {'fid(noisy real)':>15s}")
    for row in evaluations:
        print(
            f"{row['dataset']:8s} {row['feature_space']:11s} {row['num_samples']:5d} {row['evaluate_seconds']:10.3f} {row['build_cold_seconds']:12.2f}"
            f" {row['build_cached_seconds']:14.2f} {row['fid_floor']:8.3f} {row['floor_num_samples']:7d} {row['fid_noisy_real']:15.3f}"
        )

    trained, untrained = demo_trial(), demo_trial(steps_only=1)
    print("\ndemo trial (study/configs/demo.yaml, full pool), sample metrics = sampling + fid + fid_test + memorization + leakage")
    print(f"{'model':10s} {'kimg':>6s} {'trial s':>8s} {'sample s':>9s} {'share':>6s} {'fid':>8s} {'fid_test':>8s} {'floor':>7s} {'N':>5s}")
    for name, row in (("trained", trained), ("1 step", untrained)):
        print(f"{name:10s} {row['kimg']:6.2f} {row['trial_seconds']:8.1f} {row['sample_eval_seconds']:9.2f} {row['share']:6.1%}"
              f" {row['fid']:8.2f} {row['fid_test']:8.2f} {row['fid_floor']:7.2f} {row['num_samples']:5d}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    environment = {"device": args.device, "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor()}
    RESULTS.write_text(json.dumps({"environment": environment, "throughput": rates, "evaluation": evaluations,
                                    "demo_trial": {"trained": trained, "untrained_1_step": untrained}}, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
