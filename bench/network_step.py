"""Training throughput of the denoiser on CPU: images/s for one full EDM training step.

A step is what the training loop does per batch: draw ln(sigma) ~ N(-1.2, 1.2), add noise,
the weighted EDM loss, backward, and an Adam update, all in float32. Each case is compared
with the throughput EDM's reference code measured on the same 2-core machine.

    python bench/network_step.py            # both cases, ~2 minutes
    python bench/network_step.py --quick    # smoke run, a few seconds

Prints a table and writes bench/results/network_step.json (network_step_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainables.networks import MODEL_PRESETS, SIGMA_DATA, build_denoiser, count_parameters  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
P_MEAN, P_STD = -1.2, 1.2
AUG_DIM = 9  # EDM's CIFAR-10 augmentation label size


@dataclass(frozen=True)
class Case:
    name: str
    preset: str
    resolution: int
    channels: int
    batch: int
    edm_img_s: float  # EDM's reference code, same step, same machine


CASES = (
    Case("edm-reference", "digits", resolution=8, channels=1, batch=128, edm_img_s=950.0),
    Case("ddpmpp-cifar", "ddpmpp-cifar", resolution=32, channels=3, batch=16, edm_img_s=1.5),
)


def edm_loss(net: torch.nn.Module, images: torch.Tensor, aug_labels: torch.Tensor) -> torch.Tensor:
    sigma = (torch.randn(images.shape[0], 1, 1, 1) * P_STD + P_MEAN).exp()
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    denoised = net(images + torch.randn_like(images) * sigma, sigma, aug_labels)
    return (weight * (denoised - images) ** 2).mean()


def train_step(net, optimizer, images, aug_labels) -> None:
    optimizer.zero_grad(set_to_none=True)
    edm_loss(net, images, aug_labels).backward()
    optimizer.step()


def run_steps(net, optimizer, images, aug_labels, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        train_step(net, optimizer, images, aug_labels)
    return time.perf_counter() - start


def measure(case: Case, batch: int, warmup: int, runs: int, min_seconds: float) -> dict:
    """Warm up, size a run to last at least `min_seconds`, then time `runs` runs."""
    torch.manual_seed(0)
    net = build_denoiser(case.resolution, case.channels, AUG_DIM, **MODEL_PRESETS[case.preset]).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    images = torch.rand(batch, case.channels, case.resolution, case.resolution) * 2 - 1
    aug_labels = torch.zeros(batch, AUG_DIM)

    step_s = math.inf
    for _ in range(warmup):
        step_s = run_steps(net, optimizer, images, aug_labels, 1)
    steps = max(1, math.ceil(min_seconds / step_s))
    seconds = [run_steps(net, optimizer, images, aug_labels, steps) for _ in range(runs)]
    img_s = [steps * batch / s for s in seconds]
    median = statistics.median(img_s)
    return dict(
        **asdict(case),
        batch_measured=batch,
        parameters=count_parameters(net),
        steps_per_run=steps,
        img_s_runs=img_s,
        img_s_median=median,
        img_s_min=min(img_s),
        img_s_max=max(img_s),
        vs_edm=median / case.edm_img_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short runs, small CIFAR batch")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--case", choices=[c.name for c in CASES], action="append", help="run only these cases")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warmup, runs, min_seconds = (1, 1, 0.3) if args.quick else (2, 3, 3.0)
    results = []
    for case in CASES:
        if args.case and case.name not in args.case:
            continue
        batch = min(case.batch, 2) if args.quick and case.preset == "ddpmpp-cifar" else case.batch
        # One warm-up step of ddpmpp-cifar takes seconds; it needs no second one.
        case_warmup = 1 if case.preset == "ddpmpp-cifar" else warmup
        results.append(measure(case, batch, case_warmup, runs, min_seconds))

    header = f"{'case':<15} {'preset':<13} {'params':>9} {'image':>8} {'batch':>5} {'img/s':>9} {'min..max':>17} {'EDM':>7} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        image = f"{r['resolution']}x{r['resolution']}x{r['channels']}"
        spread = f"{r['img_s_min']:.1f}..{r['img_s_max']:.1f}"
        print(
            f"{r['name']:<15} {r['preset']:<13} {r['parameters'] / 1e6:>8.2f}M {image:>8} {r['batch_measured']:>5} "
            f"{r['img_s_median']:>9.1f} {spread:>17} {r['edm_img_s']:>7.1f} {r['vs_edm']:>5.2f}x"
        )

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / ("network_step_quick.json" if args.quick else "network_step.json")
    meta = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        processor=platform.processor(),
        python=platform.python_version(),
        quick=args.quick,
        warmup_steps=warmup,
        runs=runs,
        min_seconds_per_run=min_seconds,
    )
    out.write_text(json.dumps(dict(meta=meta, results=results), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
