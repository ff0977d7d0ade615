"""The worker loop: init, resume, train, evaluate, checkpoint, report. One function for Ray Train and in-process runs."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from trainables.checkpoint import NEAREST_GRID, NEAREST_PAIRS, NEAREST_PAIRS_PER_ROW, SAMPLE_GRID, load_checkpoint, save_checkpoint
from trainables.config import TrialConfig
from trainables.data import ImageDataset, load_dataset, regime_indices, regime_size, to_signed
from trainables.generation import sample_batches, trial_seeds
from trainables.loss import ScoreAugLoss, build_trial_denoiser
from trainables.metrics import DenoisingProbe, beside_nearest, memorization, save_grid
from trainables.networks import count_parameters


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the trial stops and says at which kimg."""

    def __init__(self, message: str, kimg: float):
        super().__init__(message)
        self.kimg = kimg


@dataclass
class TrainState:
    nimg: int = 0
    step: int = 0

    @property
    def kimg(self) -> float:
        return self.nimg / 1000.0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return net.module if hasattr(net, "module") else net


def _seeded(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator(device).manual_seed(seed)


def _generators(config: TrialConfig, rank: int, device: torch.device, *fresh: int) -> dict:
    """Each rank's random streams: batch indices (CPU), and the loss's noise and transform draws, made on the
    device so no per-step noise crosses from the host. `fresh` parts start new streams after a resume. Dropout
    draws from the device's default generator (seeded with the network's init): it is checkpointed with the
    others, so a resumed trial continues bit for bit as if never stopped."""
    dropout = torch.cuda.default_generators[device.index or 0] if device.type == "cuda" else torch.default_generator
    return {"batch": _seeded(config.seed, rank, 1, *fresh), "loss": _seeded(config.seed, rank, 2, *fresh, device=device),
            "dropout": dropout}


class Evaluator:
    """Everything an eval point measures, built once per trial so its inputs are fixed."""

    def __init__(self, config: TrialConfig, dataset: ImageDataset, regime: torch.Tensor, device: torch.device):
        ev = config.eval
        self.config = config
        self.dataset = dataset
        self.regime_images = dataset.train[regime]
        self.shape = tuple(dataset.train.shape[1:])
        train_probe = to_signed(self.regime_images[: ev.loss_images]).to(device)
        test_probe = to_signed(dataset.test[: ev.loss_images]).to(device)
        sd = config.diffusion.sigma_data
        self.train_probe = DenoisingProbe(train_probe, ev.loss_sigmas, sd, seed=ev.seed)
        self.test_probe = DenoisingProbe(test_probe, ev.loss_sigmas, sd, seed=ev.seed + 1)
        self.device = device
        self._fid = None

    def fid_evaluator(self):
        if self._fid is None and self.config.eval.fid:
            from trainables.fid import FidEvaluator, default_feature_space

            ev, rt = self.config.eval, self.config.runtime
            self._fid = FidEvaluator(
                self.dataset,
                ev.fid_features or default_feature_space(self.dataset.name),
                ev.num_samples,
                cache_dir=rt.cache_dir,
                weights_path=ev.fid_weights,
                device=self.device,
            )
        return self._fid

    def generate(self, net, count: int, rank: int, world: int) -> torch.Tensor:
        """Fixed-seed samples, split across ranks and gathered, so the set does not depend on the worker count."""
        ev = self.config.eval
        seeds = trial_seeds(ev.seed, count)[rank::world]
        mine = [images for _, images in sample_batches(net, seeds, self.shape, ev.sampler_steps, self.config.diffusion, self.device)]
        local = torch.cat(mine) if mine else torch.zeros((0, *self.shape), dtype=torch.uint8, device=self.device)
        if world == 1:
            return local
        padded = torch.zeros((math.ceil(count / world), *self.shape), dtype=torch.uint8, device=self.device)
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        order = torch.stack(gathered, dim=1).flatten(0, 1)  # interleave back to seed order
        return order[:count]

    def losses(self, net) -> dict:
        train_loss = self.train_probe.loss(net)
        test_loss = self.test_probe.loss(net)
        return {"train_loss": train_loss, "test_loss": test_loss, "loss_gap": test_loss - train_loss}

    def sample_metrics(self, samples: torch.Tensor) -> dict:
        metrics = {"memorization": memorization(samples, self.regime_images)}
        fid = self.fid_evaluator()
        if fid is not None:
            metrics.update(fid.evaluate(samples))
            metrics["fid_floor"] = fid.floor()
            from trainables.feature_nets import ORIENTATION_NETS
            from trainables.leakage import leakage

            if self.dataset.name in ORIENTATION_NETS:  # a shipped orientation classifier exists for it
                metrics["leakage"] = leakage(samples, self.dataset.name, self.device)
        return metrics


def _ema_beta(config: TrialConfig, nimg: int, batch: int) -> float:
    """EDM's EMA decay per step: the half-life grows with images seen (ramp-up) until it reaches ema_halflife_kimg."""
    halflife = config.train.ema_halflife_kimg * 1000
    if config.train.ema_rampup_ratio is not None:
        halflife = min(halflife, nimg * config.train.ema_rampup_ratio)
    return 0.5 ** (batch / max(halflife, 1e-8))


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """One fused lerp over all parameters; buffers are copied, since averaging them means nothing."""
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - beta)
    for b_ema, b_net in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b_net)


def trial_regime(config: TrialConfig, dataset: ImageDataset) -> torch.Tensor:
    """Indices of the trial's training images: nested across sizes, class-balanced where labels exist and asked for."""
    pool = dataset.train.shape[0]
    size = regime_size(pool, config.regime_fraction, config.regime_images)
    labels = dataset.train_labels if config.class_balanced else None
    return regime_indices(pool, size, config.subset_seed, labels)


def _eval_targets(points_kimg: list[float], global_batch: int) -> list[int]:
    """Eval points in images seen; points closer than one global batch collapse into one, and the last (the total) stays."""
    wanted = [int(round(point * 1000)) for point in points_kimg]
    targets = []
    for nimg in wanted:
        if not targets or nimg - targets[-1] >= global_batch:
            targets.append(nimg)
    targets[-1] = wanted[-1]
    return targets


def _next_target(targets: list[int], nimg: int) -> int:
    return next((target for target in targets if target > nimg), targets[-1])


def bf16_is_native(device: torch.device) -> bool:
    """Whether bf16 matrix work runs on native units here: a CUDA GPU that supports it, or a CPU with AMX or
    AVX-512 BF16 (oneDNN uses them for bf16 convolutions). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    native = (getattr(torch.cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return torch.backends.mkldnn.is_available() and any(native)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype training steps autocast to, or None for fp32. `auto` is bf16 where bf16 is native: measured
    faster than fp32 and, at the demo's budget, equivalent to it in losses and FID (docs/performance.md)."""
    if precision == "bf16" or (precision == "auto" and bf16_is_native(device)):
        return torch.bfloat16
    return None


class Trainer:
    """The training step as every trial runs it: a batch from the in-memory pool, the ScoreAug loss under the
    configured precision, backward, the learning-rate ramp, Adam and the EMA update. bench/train_step.py times
    this same object beside EDM's step."""

    def __init__(self, config: TrialConfig, net: torch.nn.Module, device: torch.device, prepare=None, world: int = 1):
        tc, rt = config.train, config.runtime
        self.config, self.device, self.world = config, device, world
        self.net = net.to(device)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=tc.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
        self.loss_fn = ScoreAugLoss.from_configs(config.score_augment, config.clean_augment, config.diffusion)
        self.model = prepare(self.net) if prepare else self.net  # what the loss calls: DDP-wrapped where distributed
        if rt.compile:
            self.model = torch.compile(self.model)
        self.dtype = autocast_dtype(rt.precision, device)
        self.local_batch = max(1, tc.batch_size // world)
        self.global_batch = self.local_batch * world

    def step(self, pool: torch.Tensor, generators: dict, state: TrainState) -> torch.Tensor:
        """One optimizer step on a batch drawn from `pool` (uint8, on the device); returns the batch's mean loss,
        the same on every rank. Raises TrainingDiverged, on every rank alike, when it is not finite."""
        tc = self.config.train
        self.model.train()
        index = torch.randint(pool.shape[0], (self.local_batch,), generator=generators["batch"]).to(self.device)
        images = to_signed(pool[index])
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = self.loss_fn(self.model, images, generators["loss"]).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        observed = loss.detach()
        if self.world > 1 and _distributed():  # every rank must see the same verdict, or DDP hangs
            observed = observed.clone()
            dist.all_reduce(observed)
            observed /= self.world
        if not torch.isfinite(observed):
            raise TrainingDiverged(f"training loss is {observed.item()} at kimg {state.kimg:.3f}", state.kimg)
        lr_scale = min(state.nimg / max(tc.lr_rampup_kimg * 1000, 1e-8), 1.0) if tc.lr_rampup_kimg > 0 else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = tc.lr * max(lr_scale, 1e-8)
        self.optimizer.step()
        state.nimg += self.global_batch
        state.step += 1
        _update_ema(self.ema, self.net, _ema_beta(self.config, state.nimg, self.global_batch))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return observed


@dataclass
class TrialRun:
    """What one trial trains and measures: built once, then resumed, stepped and evaluated."""

    config: TrialConfig
    pool: torch.Tensor  # the regime's training images, uint8 on the device
    trainer: Trainer
    evaluator: Evaluator
    generators: dict
    rank: int
    world: int
    state: TrainState = field(default_factory=TrainState)


def run_trial(config: TrialConfig, session, log=print) -> list[dict]:
    """Train one trial to `train.total_kimg`, reporting every eval point through `session`; returns the reports."""
    run = build_run(config, session)
    resume(run, session, log)
    if run.rank == 0:
        log(_describe(run))
    total_nimg = int(round(config.train.total_kimg * 1000))
    targets = _eval_targets(config.eval.points_kimg(config.train.total_kimg), run.trainer.global_batch)
    next_eval = _next_target(targets, run.state.nimg)  # after a resume: the first point past the resumed kimg
    clock = StepClock()
    reports = []
    while run.state.nimg < total_nimg:
        clock.time(run.trainer.step, run.pool, run.generators, run.state)
        if run.state.nimg >= next_eval:
            next_eval = _next_target(targets, run.state.nimg)
            reports.append(eval_point(run, session, clock, final=run.state.nimg >= total_nimg, first=not reports, log=log))
    return reports


def build_run(config: TrialConfig, session) -> TrialRun:
    """The regime's images on the device, the seeded network in its trainer, the evaluator and the random streams."""
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    device, rank, world = session.device, session.rank, session.world_size
    dataset = load_dataset(config.dataset, config.data_path, config.resolution, config.skip_unreadable)
    regime = trial_regime(config, dataset)
    torch.manual_seed(config.seed)
    net = build_trial_denoiser(config, dataset.resolution, dataset.channels)
    trainer = Trainer(config, net, device, prepare=session.prepare, world=world)
    evaluator = Evaluator(config, dataset, regime, device)
    return TrialRun(config, dataset.train[regime].to(device), trainer, evaluator, _generators(config, rank, device), rank, world)


def resume(run: TrialRun, session, log=print) -> None:
    """Continue from the session's checkpoint, if it has one: weights, optimizer, images seen and random streams."""
    with session.resume_checkpoint() as resume_dir:  # the folder lives only as long as this block
        saved = load_checkpoint(resume_dir, map_location=run.trainer.device) if resume_dir is not None else None
    if saved is None:
        return
    trainer, state = run.trainer, run.state
    trainer.net.load_state_dict(saved["net"])
    trainer.ema.load_state_dict(saved["ema"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    state.nimg, state.step = int(saved["nimg"]), int(saved["step"])
    rng = saved.get("rng", {})
    if rng.get("world_size") == run.world:
        for name, gen in run.generators.items():
            if name in rng:  # a checkpoint written before dropout's stream was kept lacks it
                gen.set_state(rng[name][run.rank].cpu())
    else:  # a different worker count: fresh, still deterministic streams
        run.generators = _generators(run.config, run.rank, trainer.device, state.step)
    session.truncate_metrics(state.kimg)
    if run.rank == 0:
        log(f"resumed from {resume_dir} at kimg {state.kimg:.3f}")


def _describe(run: TrialRun) -> str:
    config, dataset, trainer = run.config, run.evaluator.dataset, run.trainer
    balance = ", class-balanced" if config.class_balanced and dataset.train_labels is not None else ""
    precision = "bf16 autocast" if trainer.dtype is not None else "fp32"
    return (f"{config.dataset}: {run.pool.shape[0]} of {dataset.train.shape[0]} training images{balance}, "
            f"network {count_parameters(trainer.net) / 1e6:.3f} M parameters, device {trainer.device}, "
            f"{run.world} worker(s), {precision}{', compiled' if config.runtime.compile else ''}")


class StepClock:
    """Training throughput since the last eval point, and when this process took its first step."""

    def __init__(self):
        self.seconds, self.images, self.first_step_at = 0.0, 0, None

    def time(self, step, pool, generators, state: TrainState) -> None:
        started, before = time.perf_counter(), state.nimg
        step(pool, generators, state)
        self.seconds += time.perf_counter() - started
        self.images += state.nimg - before
        self.first_step_at = self.first_step_at or time.time()

    def lap(self) -> float:
        """Images per second since the last lap."""
        rate = self.images / max(self.seconds, 1e-9)
        self.seconds, self.images = 0.0, 0
        return rate


def eval_point(run: TrialRun, session, clock: StepClock, final: bool, first: bool, log=print) -> dict:
    """Measure the EMA network, checkpoint with its pictures (rank 0) and report; returns the metrics reported."""
    ev = run.config.eval
    metrics = {"kimg": run.state.kimg, "img_per_sec": clock.lap()}
    if first:  # wall-clock time of this process's first step: the driver derives start-up cost from it
        metrics["first_step_at"] = clock.first_step_at
    started = time.perf_counter()
    # Evaluation leaves the global random state as it found it: building a feature network at its first use (once
    # per process) draws its init from it, which would shift the dropout stream of training, and so a trial's
    # metrics would depend on whether its process was fresh or reused, or on the eval schedule.
    device = run.trainer.device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        measured, grid = _evaluate(run.evaluator, run.trainer.ema, final or ev.fid_at == "every", run.rank, run.world)
    metrics.update(measured)
    metrics["eval_seconds"] = time.perf_counter() - started  # sampling, sample metrics and loss probes
    checkpoint_dir = None
    if run.rank == 0:
        if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
            log(f"warning: non-finite eval metrics at kimg {run.state.kimg:.3f}: {metrics}")
        checkpoint_dir = session.scratch_dir()
        _save(checkpoint_dir, run)
        _save_pictures(checkpoint_dir, grid, run.evaluator.regime_images)
        log(_format(metrics))
    else:
        _gather_rng(run.generators, run.world)  # the collective rank 0's checkpoint makes
    session.report(metrics, checkpoint_dir)
    return metrics


def _evaluate(evaluator: Evaluator, ema, with_samples: bool, rank: int, world: int) -> tuple[dict, torch.Tensor]:
    """(metrics, sample grid): the metrics on rank 0 only; every rank takes part in sampling."""
    ev = evaluator.config.eval
    count = max(ev.num_samples, ev.grid_images) if with_samples else ev.grid_images
    started = time.perf_counter()
    samples = evaluator.generate(ema, count, rank, world)
    metrics = {}
    if rank == 0:
        if with_samples:
            metrics.update(evaluator.sample_metrics(samples[: ev.num_samples]))
            metrics["sample_eval_seconds"] = time.perf_counter() - started  # sampling + FID + memorization + leakage
        metrics.update(evaluator.losses(ema))
    return metrics, samples[: ev.grid_images]


def _gather_rng(generators: dict, world: int) -> dict:
    """Every rank's generator states, so a resumed run continues each rank's stream exactly."""
    states = {name: [gen.get_state()] for name, gen in generators.items()}
    if world > 1 and _distributed():
        for name, gen in generators.items():
            gathered = [None] * world
            dist.all_gather_object(gathered, gen.get_state())
            states[name] = gathered
    return states


def _save(directory: Path, run: TrialRun) -> None:
    trainer = run.trainer
    rng = _gather_rng(run.generators, run.world)
    rng["world_size"] = run.world
    save_checkpoint(
        {
            "net": _unwrap(trainer.net).state_dict(),
            "ema": trainer.ema.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "nimg": run.state.nimg,
            "step": run.state.step,
            "rng": rng,
            "config": json.dumps(run.config.model_dump()),
        },
        directory,
    )


def _save_pictures(directory: Path, grid: torch.Tensor, regime_images: torch.Tensor) -> None:
    """The sample grid, and its first samples beside their nearest training images: copying is seen, not just counted."""
    save_grid(grid, directory / SAMPLE_GRID)
    pairs = beside_nearest(grid[:NEAREST_PAIRS], regime_images)
    save_grid(pairs, directory / NEAREST_GRID, columns=NEAREST_PAIRS_PER_ROW, border=128)  # gray: pairs stand apart


def _format(metrics: dict) -> str:
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and k != "first_step_at")
    return f"eval {shown}"
