"""Ablations: fixed arms (no search), each run in every regime with several training seeds.

An ablation asks "what does this one choice do?" (say, rotation with or without the transform label),
so every arm gets the same budget and the same seeds, and the report gives each metric's mean and
spread over seeds per arm. Trials go through the same trainable, tracking and resume logic as a search.
"""

from __future__ import annotations

import numpy as np

from study.cells import Cell
from study.config import StudyConfig
from study.report import format_spread, mean_and_spread, regimes_in_order

ARM_METRICS = ("leakage", "fid", "fid_test", "memorization", "loss_gap")


def ablation_suggestions(config: StudyConfig, cells: list[Cell]) -> list[dict]:
    """One suggestion per (cell, arm, seed), seeds outermost so a cut-short run still covers every arm."""
    ablation = config.ablation
    return [cell.suggestion(role=arm, overrides=dict(overrides), seed=ablation.seed_offset + k)
            for k in range(ablation.seeds)
            for cell in cells
            for arm, overrides in ablation.arms.items()]


def summarize_arms(config: StudyConfig, rows: list[dict]) -> list[dict]:
    """Per regime and arm: mean and sample standard deviation over the completed seeds."""
    out = []
    done = [r for r in rows if r["phase"] == "ablation" and r["status"] == "completed"]
    for regime in regimes_in_order(rows):
        for arm, overrides in config.ablation.arms.items():
            group = [r for r in done if r["regime"] == regime and r["role"] == arm]
            entry = {"regime": regime, "arm": arm, "overrides": ", ".join(f"{k}={v}" for k, v in overrides.items()),
                     "seeds": len(group)}
            for metric in (*ARM_METRICS, "fid_floor"):
                entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean_and_spread(
                    [r[metric] for r in group if r.get(metric) is not None])
            out.append(entry)
    return out


def arms_markdown(summary: list[dict]) -> str:
    lines = ["| regime | arm | seeds | leakage | FID | FID test | FID floor | memorization | loss gap | overrides |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['regime']} | {e['arm']} | {e['seeds']} | " + " | ".join(
            format_spread(e[f"{m}_mean"], e[f"{m}_std"]) for m in ARM_METRICS[:3]) + f" | {format_spread(e['fid_floor_mean'], None)} | "
            + " | ".join(format_spread(e[f"{m}_mean"], e[f"{m}_std"]) for m in ARM_METRICS[3:]) + f" | {e['overrides']} |")
    lines += ["", "Means ± sample standard deviation over training seeds, every arm at the same budget and seeds."]
    return "\n".join(lines) + "\n"


def arms_plot(summary: list[dict], folder) -> list:
    """Leakage and FID per arm (error bars: seed spread), one panel each, regimes side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(e["arm"] for e in summary))
    regimes = list(dict.fromkeys(e["regime"] for e in summary))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(arms) + 2), sharey=True)
    height = 0.8 / len(regimes)
    for ax, metric in zip(axes, ("leakage", "fid")):
        for j, regime in enumerate(regimes):
            entries = {e["arm"]: e for e in summary if e["regime"] == regime}
            means = [entries[a][f"{metric}_mean"] or 0.0 for a in arms]
            errors = [entries[a][f"{metric}_std"] or 0.0 for a in arms]
            ax.barh(np.arange(len(arms)) + j * height, means, height, xerr=errors, label=regime, capsize=2)
        ax.set_xlabel(metric)
    floors = [e["fid_floor_mean"] for e in summary if e["fid_floor_mean"] is not None]
    if floors:
        axes[1].axvline(float(np.mean(floors)), color="k", linestyle=":", label="real-vs-real floor")
    axes[0].set_yticks(np.arange(len(arms)) + 0.4 - height / 2, arms)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = folder / "ablation.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
