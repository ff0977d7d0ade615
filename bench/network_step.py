"""Training throughput of the denoiser on CPU: images/s for one full EDM training step.

A step is what the training loop does per batch: draw ln(sigma) ~ N(-1.2, 1.2), add noise,
the weighted EDM loss, backward, and an Adam update, all in float32. Each case is compared
with the throughput EDM's reference code measured on the same 2-core machine.

    python bench/network_step.py            # both cases, ~2 minutes
    python bench/network_step.py --quick    # smoke run, a few seconds

Prints a table and writes bench/results/network_step.json (suffixed _fused_adam, _quick for
those flags). The machine is a shared VM whose speed moves by tens of percent from minute to
minute, so each case also records a matmul GFLOP/s reading taken around its runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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


def matmul_gflops(seconds: float = 1.0) -> float:
    """The machine's float32 matmul rate right now: on a shared host it moves by tens of percent,
    and img/s with it; record it beside each case to tell a slower machine from a slower network."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return count * 2 * 1024**3 / (time.perf_counter() - start) / 1e9


def measure(case: Case, batch: int, warmup: int, runs: int, min_seconds: float, fused_adam: bool) -> dict:
    """Warm up for `warmup` steps and `min_seconds`, size a run to last `min_seconds`, then time `runs` runs."""
    torch.manual_seed(0)
    net = build_denoiser(case.resolution, case.channels, AUG_DIM, **MODEL_PRESETS[case.preset]).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, fused=fused_adam or None)
    images = torch.rand(batch, case.channels, case.resolution, case.resolution) * 2 - 1
    aug_labels = torch.zeros(batch, AUG_DIM)

    step_s, warm_s, warm_steps = math.inf, 0.0, 0
    while warm_steps < warmup or warm_s < min_seconds:  # small models need seconds, not steps, to settle
        step_s = run_steps(net, optimizer, images, aug_labels, 1)
        warm_s, warm_steps = warm_s + step_s, warm_steps + 1
    steps = max(1, math.ceil(min_seconds / step_s))
    load_before, gflops_before = os.getloadavg()[0], matmul_gflops(min(1.0, min_seconds))
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
        load_avg_1min=[load_before, os.getloadavg()[0]],
        matmul_gflops=[gflops_before, matmul_gflops(min(1.0, min_seconds))],
    )


def _rate(img_s: float) -> str:
    return f"{img_s:.1f}" if img_s >= 100 else f"{img_s:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short runs, small CIFAR batch")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--case", choices=[c.name for c in CASES], action="append", help="run only these cases")
    parser.add_argument(
        "--fused-adam", action="store_true", help="Adam(fused=True); default: torch's default Adam, as EDM's loop uses"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warmup, runs, min_seconds = (1, 1, 0.3) if args.quick else (2, 3, 3.0)
    results = []
    for case in CASES:
        if args.case and case.name not in args.case:
            continue
        batch = min(case.batch, 2) if args.quick and case.preset == "ddpmpp-cifar" else case.batch
        results.append(measure(case, batch, warmup, runs, min_seconds, args.fused_adam))

    header = (
        f"{'case':<15} {'preset':<13} {'params':>9} {'image':>8} {'batch':>5} "
        f"{'img/s':>9} {'min..max':>17} {'EDM':>7} {'ratio':>6} {'matmul GF/s':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        image = f"{r['resolution']}x{r['resolution']}x{r['channels']}"
        spread = f"{_rate(r['img_s_min'])}..{_rate(r['img_s_max'])}"
        print(
            f"{r['name']:<15} {r['preset']:<13} {r['parameters'] / 1e6:>8.2f}M {image:>8} {r['batch_measured']:>5} "
            f"{_rate(r['img_s_median']):>9} {spread:>17} {_rate(r['edm_img_s']):>7} {r['vs_edm']:>5.2f}x "
            f"{min(r['matmul_gflops']):>5.0f}..{max(r['matmul_gflops']):<5.0f}"
        )

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"network_step{'_fused_adam' if args.fused_adam else ''}{'_quick' if args.quick else ''}.json"
    meta = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        processor=platform.processor(),
        python=platform.python_version(),
        quick=args.quick,
        fused_adam=args.fused_adam,
        warmup_steps_at_least=warmup,
        runs=runs,
        min_seconds_per_run=min_seconds,
    )
    out.write_text(json.dumps(dict(meta=meta, results=results), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
