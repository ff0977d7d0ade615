"""Training throughput of the denoiser on CPU: images/s for one full EDM training step, ours beside EDM's.

A step is what the training loop does per batch: draw ln(sigma) ~ N(-1.2, 1.2), add noise,
the weighted EDM loss, backward, and an Adam update, all in float32. Each case times our
network and EDM's reference ops (bench/edm_reference.py) in the same process, in alternating
runs, so both see the same host: the verdict is the ratio between them. The throughput EDM's
own code reached on a machine of this kind on another day (950 and 1.5 img/s) is printed beside
it, with this host's matmul rate, because this shared VM's speed moves by tens of percent.

    python bench/network_step.py            # both cases, ~3 minutes
    python bench/network_step.py --quick    # smoke run, a few seconds

Each implementation steps with the Adam its own training loop uses (ours fused, EDM's torch's
default); `--adam default` or `--adam fused` gives both the same one, to compare the networks alone.
Prints a table and writes bench/results/network_step.json (suffixed _adam_<choice>, _quick for
those flags).
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
import edm_reference  # noqa: E402  (bench/, beside this file)
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
    edm_img_s: float  # EDM's own code, same step, a 2-core machine of this kind, another day


CASES = (
    Case("edm-reference", "digits", resolution=8, channels=1, batch=128, edm_img_s=950.0),
    Case("ddpmpp-cifar", "ddpmpp-cifar", resolution=32, channels=3, batch=16, edm_img_s=1.5),
)


def edm_loss(net: torch.nn.Module, images: torch.Tensor, aug_labels: torch.Tensor) -> torch.Tensor:
    sigma = (torch.randn(images.shape[0], 1, 1, 1) * P_STD + P_MEAN).exp()
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    denoised = net(images + torch.randn_like(images) * sigma, sigma, aug_labels)
    return (weight * (denoised - images) ** 2).mean()


# implementation -> (network builder, loss, its training loop's Adam): ours as trainables/loop.py trains
# (fused Adam), EDM's as its training loop does (torch's default Adam, a per-parameter loop on CPU)
IMPLEMENTATIONS = {
    "ours": (lambda case: build_denoiser(case.resolution, case.channels, AUG_DIM, **MODEL_PRESETS[case.preset]),
             edm_loss, dict(fused=True)),
    "edm": (lambda case: edm_reference.EDMPrecond(case.resolution, case.channels, AUG_DIM, **MODEL_PRESETS[case.preset]),
            edm_reference.edm_loss, dict()),
}
ADAM_CHOICES = {"own": None, "default": dict(), "fused": dict(fused=True)}


class Stepper:
    """One implementation's network, optimizer and fixed batch, ready to time training steps."""

    def __init__(self, implementation: str, case: Case, batch: int, adam: str):
        build, self.loss, own_adam = IMPLEMENTATIONS[implementation]
        torch.manual_seed(0)
        self.net = build(case).train()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-4, **(ADAM_CHOICES[adam] or own_adam))
        self.images = torch.rand(batch, case.channels, case.resolution, case.resolution) * 2 - 1
        self.aug_labels = torch.zeros(batch, AUG_DIM)

    def run(self, steps: int) -> float:
        """Seconds for `steps` training steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.net, self.images, self.aug_labels).backward()
            self.optimizer.step()
        return time.perf_counter() - start

    def warm_up(self, steps: int, min_seconds: float) -> float:
        """At least `steps` steps and `min_seconds` (small models need seconds to settle); the last step's time."""
        step_s, total, done = math.inf, 0.0, 0
        while done < steps or total < min_seconds:
            step_s = self.run(1)
            total, done = total + step_s, done + 1
        return step_s


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


def measure(case: Case, batch: int, warmup: int, runs: int, min_seconds: float, adam: str) -> dict:
    """Warm both implementations up, size a run to last `min_seconds`, then time `runs` rounds of one run
    each, alternating which goes first; the verdict is the median of the per-round ratios ours / EDM."""
    steppers = {name: Stepper(name, case, batch, adam) for name in IMPLEMENTATIONS}
    step_s = {name: s.warm_up(warmup, min_seconds) for name, s in steppers.items()}
    steps = max(1, math.ceil(min_seconds / step_s["ours"]))
    load_before, gflops_before = os.getloadavg()[0], matmul_gflops(min(1.0, min_seconds))
    img_s = {name: [] for name in steppers}
    for round_ in range(runs):
        for name in (list(steppers) if round_ % 2 == 0 else reversed(list(steppers))):
            img_s[name].append(steps * batch / steppers[name].run(steps))
    paired = [ours / edm for ours, edm in zip(img_s["ours"], img_s["edm"])]
    median = {name: statistics.median(values) for name, values in img_s.items()}
    return dict(
        **asdict(case),
        batch_measured=batch,
        parameters={name: count_parameters(s.net) for name, s in steppers.items()},
        steps_per_run=steps,
        img_s_runs=img_s,
        img_s_median=median,
        ratio_runs=paired,
        vs_edm_same_host=statistics.median(paired),
        vs_edm_quoted=median["ours"] / case.edm_img_s,
        edm_same_host_vs_quoted=median["edm"] / case.edm_img_s,
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
    parser.add_argument("--runs", type=int, default=5, help="alternating timed runs per implementation")
    parser.add_argument("--adam", choices=ADAM_CHOICES, default="own",
                        help="own: each as its training loop runs it (ours fused, EDM's torch default); "
                             "default or fused: the same Adam for both, to compare the networks alone")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warmup, runs, min_seconds = (1, 1, 0.3) if args.quick else (2, args.runs, 3.0)
    results = []
    for case in CASES:
        if args.case and case.name not in args.case:
            continue
        batch = min(case.batch, 2) if args.quick and case.preset == "ddpmpp-cifar" else case.batch
        results.append(measure(case, batch, warmup, runs, min_seconds, args.adam))

    header = (
        f"{'case':<14} {'params':>8} {'image':>8} {'batch':>5} {'ours img/s':>10} {'EDM img/s':>10} "
        f"{'ours/EDM':>8} {'EDM quoted':>10} {'ours/quoted':>11} {'matmul GF/s':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        image = f"{r['resolution']}x{r['resolution']}x{r['channels']}"
        gflops = f"{min(r['matmul_gflops']):.0f}..{max(r['matmul_gflops']):.0f}"
        print(
            f"{r['name']:<14} {r['parameters']['ours'] / 1e6:>7.2f}M {image:>8} {r['batch_measured']:>5} "
            f"{_rate(r['img_s_median']['ours']):>10} {_rate(r['img_s_median']['edm']):>10} "
            f"{r['vs_edm_same_host']:>7.3f}x {_rate(r['edm_img_s']):>10} {r['vs_edm_quoted']:>10.2f}x {gflops:>11}"
        )
    print(f"medians of {runs} alternating run(s) per implementation; ours/EDM is the median of the per-run ratios")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"network_step{'' if args.adam == 'own' else '_adam_' + args.adam}{'_quick' if args.quick else ''}.json"
    meta = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        processor=platform.processor(),
        python=platform.python_version(),
        quick=args.quick,
        adam=args.adam,
        warmup_steps_at_least=warmup,
        runs=runs,
        min_seconds_per_run=min_seconds,
    )
    out.write_text(json.dumps(dict(meta=meta, results=results), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
