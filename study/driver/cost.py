"""What a GPU study will cost before it is launched: GPU-hours from per-GPU training throughput.

Training images are trials x kimg; sampling for FID costs (2 x steps - 1) network evaluations per sample
(Heun), each about a third of a training step (forward only). Throughput is measured where we have it,
else cited from the paper that defines the network, and the estimate says which.
"""

from __future__ import annotations

from study.config import StudyConfig
from study.phases.cells import capacity_values

# Per-GPU training images/s of known presets, with where the number comes from.
CITED_THROUGHPUT = {
    "ddpmpp-cifar": (145.0, "cited: EDM (Karras et al. 2022) trains DDPM++ on CIFAR-10 for 200 Mimg in about "
                            "2 days on 8 V100 GPUs, i.e. ~145 img/s per V100; A100/H100 run 2-4x faster"),
}
FORWARD_SHARE = 1 / 3  # a forward pass costs about a third of a forward + backward + optimizer step

# An adaptive design's trials at the precision of a grid of the same arms at 7 sizes x 3 seeds, as a share of that
# grid's trials: the stopping rule's mean over simulated studies at 2 and at 16 trials at once
# (`python bench/design_simulation.py [--slots 16 --studies 100]`; docs/adaptive_design.md). More trials at once
# place each on less information, so a slot count between two simulated ones takes the larger share.
SIMULATED_SHARE = {2: 0.33, 16: 0.65}
GRID_SIZES, GRID_SEEDS = 7, 3


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


def simulated_share(slots: int) -> tuple[float, int]:
    """(share of the grid's trials, the slot count it was simulated at): the nearest simulated count at or above
    `slots`, else the largest simulated (an underestimate beyond it)."""
    measured = sorted(SIMULATED_SHARE)
    at = next((count for count in measured if count >= slots), measured[-1])
    return SIMULATED_SHARE[at], at


def describe_design_cost(config: StudyConfig, search_trials: int, slots: int) -> str | None:
    """An adaptive design's expected and worst-case GPU-hours beside those of the grid it replaces (the same
    arms at 7 sizes x 3 seeds, searched at each size when the design has a searched arm)."""
    per_trial = gpu_hours(config, 1)
    if per_trial is None:
        return None
    d, capacities = config.design, len(capacity_values(config))
    arms = 1 + len(config.confirm.arms) + int(d.searched_arm)
    grid_search = config.search.trials_per_regime * GRID_SIZES * capacities if d.searched_arm else 0
    grid_trials = grid_search + arms * GRID_SIZES * GRID_SEEDS * capacities
    share, at = simulated_share(d.slots or slots)
    expected = search_trials + min(share * arms * GRID_SIZES * GRID_SEEDS, d.max_trials) * capacities
    worst = search_trials + d.max_trials * capacities
    hours = per_trial[0] + per_trial[1]
    return (f"  estimated cost: expected {expected * hours:,.0f} GPU-hours ({expected:.0f} trials: {search_trials} "
            f"searched, then the design at {share:.2f} of the grid's trials, as simulated with {at} trials at once: "
            f"bench/design_simulation.py), worst case {worst * hours:,.0f} ({worst} trials, every design trial at full "
            f"length), against {grid_trials * hours:,.0f} for the grid of the same arms ({grid_trials} trials: "
            f"{GRID_SIZES} sizes x {GRID_SEEDS} seeds{', searched at each size' if grid_search else ''}). "
            f"{hours:,.0f} GPU-hours per trial; throughput {per_trial[2]}")


def describe_cost(config: StudyConfig, total_trials: int) -> str | None:
    estimate = gpu_hours(config, total_trials)
    if estimate is None:
        return None
    train, sample, source = estimate
    stopping = "if no trial stops early; ASHA cuts part of the search" if config.scheduler.kind == "asha" else "(no early stopping)"
    return (f"  estimated cost: {train + sample:,.0f} GPU-hours ({train:,.0f} training + {sample:,.0f} FID sampling) "
            f"{stopping}. Throughput {source}")
