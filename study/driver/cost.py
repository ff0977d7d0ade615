"""What a GPU study will cost before it is launched: GPU-hours from per-GPU training throughput.

Training images are trials x kimg; sampling for FID costs (2 x steps - 1) network evaluations per sample
(Heun), each about a third of a training step (forward only). Throughput is measured where we have it,
else cited from the paper that defines the network, and the estimate says which.
"""

from __future__ import annotations

from study.config import StudyConfig

# Per-GPU training images/s of known presets, with where the number comes from.
CITED_THROUGHPUT = {
    "ddpmpp-cifar": (145.0, "cited: EDM (Karras et al. 2022) trains DDPM++ on CIFAR-10 for 200 Mimg in about "
                            "2 days on 8 V100 GPUs, i.e. ~145 img/s per V100; A100/H100 run 2-4x faster"),
}
FORWARD_SHARE = 1 / 3  # a forward pass costs about a third of a forward + backward + optimizer step


def gpu_hours(config: StudyConfig, total_trials: int, img_per_sec: float | None = None) -> tuple[float, float, str] | None:
    """(training GPU-hours, sampling GPU-hours, source) with no early stopping, or None without GPUs/throughput."""
    if config.resources.gpus_per_worker <= 0:
        return None
    source = "measured"
    if img_per_sec is None:
        cited = CITED_THROUGHPUT.get(config.trial.model.preset)
        if cited is None:
            return None
        img_per_sec, source = cited
    trial, ev = config.trial, config.trial.eval
    train_images = total_trials * trial.train.total_kimg * 1000
    sample_evals = len(ev.points_kimg(trial.train.total_kimg)) if ev.fid_at == "every" else 1
    sample_passes = total_trials * sample_evals * ev.num_samples * (2 * ev.sampler_steps - 1) * FORWARD_SHARE
    return train_images / img_per_sec / 3600, sample_passes / img_per_sec / 3600, source


def describe_cost(config: StudyConfig, total_trials: int) -> str | None:
    estimate = gpu_hours(config, total_trials)
    if estimate is None:
        return None
    train, sample, source = estimate
    stopping = "if no trial stops early; ASHA cuts part of the search" if config.scheduler.kind == "asha" else "(no early stopping)"
    return (f"  estimated cost: {train + sample:,.0f} GPU-hours ({train:,.0f} training + {sample:,.0f} FID sampling) "
            f"{stopping}. Throughput {source}")
