"""What the memorization audit costs at the field's sizes: the study's copy test (trainables.metrics.copy_test,
blocks of 1,024 samples) on N generated against M training images, seconds and peak memory.

    python bench/memorization_audit.py [--samples 50000] [--train 50000] [--shape 1,8,8] [--threads 2]

Random uint8 images stand in for both sets (the cost depends on the sizes only). Prints a table and writes
bench/results/memorization_audit.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.metrics import NEAREST_CHUNK, copy_test  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "memorization_audit.json"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def measure(samples: int, train: int, shape: tuple[int, ...]) -> dict:
    generator = torch.Generator().manual_seed(0)
    generated = torch.randint(0, 256, (samples, *shape), dtype=torch.uint8, generator=generator)
    training = torch.randint(0, 256, (train, *shape), dtype=torch.uint8, generator=generator)
    before = peak_rss_gib()
    started = time.perf_counter()
    found = copy_test(generated, training)
    seconds = time.perf_counter() - started
    dense_gib = samples * train * 4 / 2**30
    return {"samples": samples, "train": train, "shape": list(shape), "seconds": seconds, "peak_rss_gib": peak_rss_gib(),
            "peak_rss_before_gib": before, "dense_distance_matrix_gib": dense_gib, "block": NEAREST_CHUNK,
            "memorization": float(found.copied.float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--shape", default="1,8,8", help="C,H,W of the images (3,32,32 for CIFAR-10)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    row = measure(args.samples, args.train, tuple(int(v) for v in args.shape.split(",")))
    row.update(threads=args.threads, host=platform.node(), torch=torch.__version__)
    print("| samples | train | shape | seconds | peak RSS GiB | a dense N x M matrix GiB |")
    print("|---|---|---|---|---|---|")
    print(f"| {row['samples']} | {row['train']} | {'x'.join(map(str, row['shape']))} | {row['seconds']:.1f} | "
          f"{row['peak_rss_gib']:.2f} | {row['dense_distance_matrix_gib']:.1f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
