"""Training throughput of the whole training step: ours as every trial runs it, beside EDM's own step.

Ours is `trainables.loop.Trainer.step`, the object `run_trial` steps: a batch drawn from the in-memory uint8
pool, `ScoreAugLoss` (at p = 0, and at p = 0.5 with the default transforms) under the configured precision,
backward, the learning-rate ramp, fused Adam and the EMA update. EDM's is NVlabs/edm's own `EDMPrecond` +
DDPM++ `SongUNet` + `EDMLoss` (no augmentation pipe), stepped as its training_loop.py steps: uint8 batch to
float, loss.sum() / batch, backward, the learning-rate ramp, nan_to_num on every gradient, torch's default Adam,
and its per-parameter EMA. EDM's code is loaded from outside this repository (bench/edm_reference.py).

    python bench/train_step.py --edm DIR           # DIR: a checkout of NVlabs/edm, or its git dir (or EDM_SOURCE)
    python bench/train_step.py --edm reference     # without EDM's code: its ops re-implemented (edm_reference.py)
    python bench/train_step.py --quick             # smoke run, a few seconds per case
    python bench/train_step.py --variants p0,p0:fp32,p0:bf16+compile,p0:bf16+cl    # other settings
    python bench/train_step.py --device cuda --case ddpmpp-cifar --batch 512 --edm none --variants p0:fp32,p0:bf16,p0:bf16+compile

A variant is `p<score_augment.p>[:<settings>]`, settings joined by `+`: `fp32` or `bf16` (runtime.precision;
none: the default, `auto`), `compile` (runtime.compile), `cl` (channels-last weights, bench only). All runs of a
case alternate in rounds, so they see the same host; each ratio is the median of the per-round ratios to EDM.
Outside the network: the step's phases booked by hooks around the network's forward, the loss, the optimizer and
the EMA update over a second of steps (the batch draw; the loss's noise and transform draws and weighting; Adam
with the learning-rate ramp; EMA), as shares of those steps. On CUDA (or with --flops) FLOPs are counted
by torch.utils.flop_counter and MFU is given against the chip's dense bf16 peak. Prints a table and writes
bench/results/train_step[_TAG].json.
"""

from __future__ import annotations

import argparse
import copy
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
from trainables import loop  # noqa: E402
from trainables.config import load_trial_config  # noqa: E402
from trainables.loop import Trainer, TrainState  # noqa: E402
from trainables.loss import AUG_DIM, build_trial_denoiser  # noqa: E402
from trainables.networks import MODEL_PRESETS, count_parameters  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
EDM_AUG_DIM = 9  # EDM's CIFAR-10 augmentation label size
EDM_LR, EDM_RAMPUP_KIMG, EDM_EMA_HALFLIFE_KIMG, EDM_EMA_RAMPUP = 1e-3, 10_000, 500, 0.05  # EDM's train.py defaults
POOL_IMAGES = 1024
# A step's phases: the batch draw; the loss's noise and transform draws and weighting; the network's forward and
# backward (with zero_grad and the loss's few elementwise backward ops); the optimizer with its lr ramp; the EMA.
PHASES = ("data", "draws", "network", "optimizer", "ema", "other")
# Dense bf16 peak FLOP/s by device name (first match wins): the MFU denominator.
BF16_PEAK = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("A100", 312e12),
             ("L40S", 362e12), ("L4", 121e12))


@dataclass(frozen=True)
class Case:
    name: str
    preset: str
    resolution: int
    channels: int
    batch: int
    threads: int
    variants: tuple[str, ...]


CASES = (
    Case("edm-8x8", "digits", 8, 1, batch=128, threads=2, variants=("p0", "p0.5")),  # EDM's 8x8 benchmark config
    Case("ddpmpp-cifar", "ddpmpp-cifar", 32, 3, batch=16, threads=2, variants=("p0", "p0.5")),  # EDM's CIFAR-10 net
    # The default study's trials (study/configs/demo.yaml): 1 thread each, 2 at a time. fp32 was the old default.
    Case("study-trial", "digits-tiny", 8, 1, batch=64, threads=1, variants=("p0", "p0:fp32")),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PhaseClock:
    """Seconds per phase of the steps it watches: `mark(phase)` books the time since the last mark to `phase`."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.last = device, dict.fromkeys(PHASES, 0.0), None

    def start(self) -> None:
        _sync(self.device)
        self.last = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.last is not None:
            _sync(self.device)
            now = time.perf_counter()
            self.seconds[phase] += now - self.last
            self.last = now

    def shares(self) -> dict:
        total = sum(self.seconds.values())
        return {phase: seconds / total for phase, seconds in self.seconds.items()}


def _timed_network(net: torch.nn.Module, clock: PhaseClock) -> list:
    """Hooks that book the network's forward to `network` and what the loss did before it to `draws`."""
    return [net.register_forward_pre_hook(lambda *_: clock.mark("draws")),
            net.register_forward_hook(lambda *_: clock.mark("network"))]


class Ours:
    """Our step, through the Trainer that run_trial uses."""

    def __init__(self, case: Case, variant: str, batch: int, pool: torch.Tensor, device: torch.device):
        p, _, settings = variant.partition(":")
        flags = set(filter(None, settings.split("+")))
        unknown = flags - {"fp32", "bf16", "compile", "cl"}
        if unknown or not p.startswith("p"):
            raise SystemExit(f"variant {variant!r}: expected p<prob>[:fp32|bf16][+compile][+cl]")
        overrides = [f"model.preset={case.preset}", f"train.batch_size={batch}", f"score_augment.p={float(p[1:])}",
                     f"runtime.compile={'compile' in flags}"]
        overrides += [f"runtime.precision={precision}" for precision in ("fp32", "bf16") if precision in flags]
        config = load_trial_config(None, overrides)
        torch.manual_seed(0)
        net = build_trial_denoiser(config, case.resolution, case.channels)
        self.trainer = Trainer(config, net, device)
        self.net = self.trainer.net
        if "cl" in flags:
            self.net.to(memory_format=torch.channels_last)
        self.name, self.device, self.pool, self.batch = f"ours {variant}", device, pool, batch
        self.precision = "bf16" if self.trainer.dtype is not None else "fp32"
        self.generators = {"batch": torch.Generator().manual_seed(1), "loss": torch.Generator(device).manual_seed(2)}
        self.state = TrainState()

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.trainer.step(self.pool, self.generators, self.state)
        _sync(self.device)
        return time.perf_counter() - start

    def autocast(self):
        dtype = self.trainer.dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def network_pass(self):
        """The network's forward and backward alone, uncompiled, under the step's autocast: what FLOPs are counted on."""
        t = self.trainer
        x = torch.randn(self.batch, *self.pool.shape[1:], device=self.device)
        sigma, labels = torch.full((self.batch,), 0.5, device=self.device), torch.zeros(self.batch, AUG_DIM, device=self.device)

        def run():
            t.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                out = t.net(x, sigma, labels)
            out.float().square().mean().backward()
        return run

    def phases(self, min_seconds: float) -> dict:
        """Shares of the step's phases over steps lasting `min_seconds`, booked by hooks around the Trainer's own
        step: the loss, the network's forward, optimizer.step and the EMA update."""
        t, clock = self.trainer, PhaseClock(self.device)
        loss_fn, optimizer_step, update_ema = t.loss_fn, t.optimizer.step, loop._update_ema

        def loss(*args):
            clock.mark("data")
            value = loss_fn(*args)
            clock.mark("draws")
            return value

        def step(*args, **kwargs):
            clock.mark("network")
            optimizer_step(*args, **kwargs)
            clock.mark("optimizer")

        def ema(*args):
            update_ema(*args)
            clock.mark("ema")

        hooks = _timed_network(t.model, clock)
        t.loss_fn, t.optimizer.step, loop._update_ema = loss, step, ema
        try:
            started = time.perf_counter()
            while time.perf_counter() - started < min_seconds:
                clock.start()
                t.step(self.pool, self.generators, self.state)
                clock.mark("other")
        finally:
            t.loss_fn, loop._update_ema = loss_fn, update_ema
            del t.optimizer.step
            for hook in hooks:
                hook.remove()
        return clock.shares()


class EDM:
    """EDM's step as its training_loop.py runs it, with EDM's own modules (or the re-implemented ops)."""

    def __init__(self, case: Case, edm, batch: int, pool: torch.Tensor, device: torch.device):
        arch = MODEL_PRESETS[case.preset]
        torch.manual_seed(0)
        if edm == "reference":
            self.net = edm_reference.EDMPrecond(case.resolution, case.channels, EDM_AUG_DIM, **arch)
            zeros = torch.zeros(batch, EDM_AUG_DIM, device=device)
            self.call = lambda x, sigma: self.net(x, sigma, zeros)
            self.loss = lambda net, images: edm_reference.edm_loss(net, images, zeros)  # already summed / batch
        else:
            self.net = edm.networks.EDMPrecond(
                case.resolution, case.channels, label_dim=0, use_fp16=False, model_type="SongUNet",
                embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
                resample_filter=[1, 1], augment_dim=EDM_AUG_DIM, **arch)
            loss_fn = edm.loss.EDMLoss()
            self.call = lambda x, sigma: self.net(x, sigma)
            self.loss = lambda net, images: loss_fn(net=net, images=images, labels=None, augment_pipe=None).sum() / images.shape[0]
        self.net.train().requires_grad_(True).to(device)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=EDM_LR, betas=[0.9, 0.999], eps=1e-8)
        self.name, self.device, self.pool, self.batch = "EDM" if edm != "reference" else "EDM ops", device, pool, batch
        self.precision = "fp32"  # EDM runs fp16 only on CUDA with --fp16; its CPU step is fp32
        self.generator = torch.Generator().manual_seed(1)
        self.nimg = 0

    def images(self) -> torch.Tensor:
        index = torch.randint(self.pool.shape[0], (self.batch,), generator=self.generator)
        return self.pool[index.to(self.device)].to(torch.float32) / 127.5 - 1

    def adam_step(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = EDM_LR * min(self.nimg / max(EDM_RAMPUP_KIMG * 1000, 1e-8), 1)
        for param in self.net.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        self.optimizer.step()

    def ema_update(self) -> None:
        halflife = min(EDM_EMA_HALFLIFE_KIMG * 1000, self.nimg * EDM_EMA_RAMPUP)
        beta = 0.5 ** (self.batch / max(halflife, 1e-8))
        for p_ema, p_net in zip(self.ema.parameters(), self.net.parameters()):
            p_ema.copy_(p_net.detach().lerp(p_ema, beta))

    def run(self, steps: int, clock: PhaseClock | None = None) -> float:
        mark = clock.mark if clock else lambda phase: None
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            images = self.images()
            mark("data")
            loss = self.loss(self.net, images)
            mark("draws")
            loss.backward()
            mark("network")
            self.adam_step()
            mark("optimizer")
            self.nimg += self.batch
            self.ema_update()
            mark("ema")
        _sync(self.device)
        return time.perf_counter() - start

    def phases(self, min_seconds: float) -> dict:
        clock = PhaseClock(self.device)
        hooks = _timed_network(self.net, clock)
        started = time.perf_counter()
        while time.perf_counter() - started < min_seconds:
            clock.start()
            self.run(1, clock)
        for hook in hooks:
            hook.remove()
        return clock.shares()

    def network_pass(self):
        x = torch.randn(self.batch, *self.pool.shape[1:], device=self.device)
        sigma = torch.full((self.batch,), 0.5, device=self.device)

        def run():
            self.optimizer.zero_grad(set_to_none=True)
            self.call(x, sigma).square().mean().backward()
        return run


def flops_per_image(stepper) -> float:
    """Model FLOPs of one training image: the network's forward and backward, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    run = stepper.network_pass()
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / stepper.batch


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def bf16_peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return _cpu_model(), None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in BF16_PEAK if key in name), None)


def measure(case: Case, steppers: list, rounds: int, warmup: int, min_seconds: float, device, flops: bool) -> dict:
    """Warm every stepper up, size one run to `min_seconds`, then time `rounds` rounds (order alternating)."""
    first_step_s, step_s, skipped = {}, {}, {}
    for s in list(steppers):
        try:
            first_step_s[s.name] = s.run(1)  # compiling, where compiled
            done, total = 0, 0.0
            while done < warmup or total < min_seconds:
                step_s[s.name] = s.run(1)
                done, total = done + 1, total + step_s[s.name]
        except torch.OutOfMemoryError:
            skipped[s.name] = f"out of memory at batch {s.batch}"
            steppers.remove(s)
            del s
            torch.cuda.empty_cache()
    if not steppers:
        return dict(**asdict(case), device=str(device), rows=[], skipped=skipped)
    steps = {s.name: max(1, math.ceil(min_seconds / step_s[s.name])) for s in steppers}
    img_s = {s.name: [] for s in steppers}
    for round_ in range(rounds):
        for s in steppers if round_ % 2 == 0 else reversed(steppers):
            img_s[s.name].append(steps[s.name] * s.batch / s.run(steps[s.name]))
        print(f"{case.name} round {round_ + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.4g}" for n, v in img_s.items()), flush=True)
    base = steppers[0].name
    device_name, peak = bf16_peak(device)
    rows = []
    for s in steppers:
        shares = s.phases(max(min_seconds, 1.0))
        outside = {name: share for name, share in shares.items() if name != "network"}
        row = dict(
            name=s.name, precision=s.precision, parameters=count_parameters(s.net),
            steps_per_run=steps[s.name], first_step_s=first_step_s[s.name], img_s_runs=img_s[s.name],
            img_s=statistics.median(img_s[s.name]),
            ratio_runs=[a / b for a, b in zip(img_s[s.name], img_s[base])],
            network_share=shares["network"], outside_share=outside,
            outside_total=sum(outside.values()),
        )
        row["ratio"] = statistics.median(row["ratio_runs"])
        row["ratio_of_best"] = max(img_s[s.name]) / max(img_s[base])  # each side's least disturbed run
        if flops:
            row["flops_per_image"] = flops_per_image(s)
            row["tflop_s"] = row["img_s"] * row["flops_per_image"] / 1e12
            row["mfu"] = row["img_s"] * row["flops_per_image"] / peak if peak else None
        rows.append(row)
    return dict(**asdict(case), batch_measured=steppers[0].batch, device=str(device), device_name=device_name,
                bf16_peak_flop_s=peak, baseline=base, rows=rows, skipped=skipped, load_avg_1min=os.getloadavg()[0])


def print_table(results: list[dict]) -> None:
    header = (f"{'case':<13} {'run':<22} {'prec':<5} {'batch':>5} {'img/s':>9} {'vs base':>8} {'best':>7} {'network':>8} "
              f"{'outside':>8} {'data':>6} {'draws':>6} {'optim':>6} {'ema':>6} {'MFU':>6}")
    print(header)
    print("-" * len(header))
    for r in results:
        for name, why in r["skipped"].items():
            print(f"{r['name']:<13} {name:<22} skipped: {why}")
        for row in r["rows"]:
            o = row["outside_share"]
            mfu = f"{row['mfu']:.1%}" if row.get("mfu") else "-"
            rate = f"{row['img_s']:.1f}" if row["img_s"] >= 100 else f"{row['img_s']:.3f}"
            print(f"{r['name']:<13} {row['name']:<22} {row['precision']:<5} {r['batch_measured']:>5} {rate:>9} "
                  f"{row['ratio']:>7.3f}x {row['ratio_of_best']:>6.3f}x {row['network_share']:>8.1%} {row['outside_total']:>8.1%} {o['data']:>6.1%} "
                  f"{o['draws']:>6.1%} {o['optimizer']:>6.1%} {o['ema']:>6.1%} {mfu:>6}")
    print("vs base: median of per-round ratios to each case's first run (EDM where timed); best: the ratio of each "
          "side's fastest run; shares: the step's phases over a second of steps, booked by hooks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edm", default=os.environ.get("EDM_SOURCE", "reference"),
                        help="NVlabs/edm checkout or git dir; 'reference' for bench/edm_reference.py's ops; 'none' to skip")
    parser.add_argument("--case", choices=[c.name for c in CASES], action="append", help="run only these cases")
    parser.add_argument("--variants", help="comma-separated variants of ours for every case (default: per case)")
    parser.add_argument("--batch", type=int, help="batch size for every case (default: per case)")
    parser.add_argument("--threads", type=int, help="torch threads for every case (default: per case)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="length of one timed run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of short runs, CIFAR at batch 2")
    parser.add_argument("--flops", action="store_true", help="count FLOPs and MFU (always on CUDA)")
    parser.add_argument("--tag", help="suffix of the JSON file name")
    parser.add_argument("--json", help="write the JSON here instead")
    args = parser.parse_args()

    device = torch.device(args.device)
    edm = args.edm if args.edm in ("reference", "none") else edm_reference.load_edm(args.edm)
    rounds, warmup, min_seconds = (1, 1, 0.2) if args.quick else (args.rounds, 2, args.min_seconds)
    results = []
    for case in CASES:
        if args.case and case.name not in args.case:
            continue
        torch.set_num_threads(args.threads or case.threads)
        batch = args.batch or (min(case.batch, 2) if args.quick and case.preset == "ddpmpp-cifar" else case.batch)
        pool = torch.randint(0, 256, (POOL_IMAGES, case.channels, case.resolution, case.resolution),
                             generator=torch.Generator().manual_seed(0), dtype=torch.uint8).to(device)
        variants = args.variants.split(",") if args.variants else case.variants
        steppers = [] if edm == "none" else [EDM(case, edm, batch, pool, device)]
        steppers += [Ours(case, variant, batch, pool, device) for variant in variants]
        results.append(measure(case, steppers, rounds, warmup, min_seconds, device, args.flops or device.type == "cuda"))
        print(f"{case.name}: done", flush=True)
    print_table(results)

    meta = dict(torch=torch.__version__, machine=platform.machine(), processor=_cpu_model(),
                bf16_native=loop.bf16_is_native(device),
                python=platform.python_version(), device=str(device), edm=str(getattr(edm, "root", edm)),
                edm_source=args.edm, quick=args.quick, rounds=rounds, min_seconds_per_run=min_seconds,
                cpu_capability=torch.backends.cpu.get_cpu_capability())
    out = Path(args.json) if args.json else RESULTS_DIR / f"train_step{'_' + args.tag if args.tag else ''}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, results=results), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
