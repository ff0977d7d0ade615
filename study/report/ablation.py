"""An ablation's report: per regime and arm, each compared metric's mean and spread over training seeds."""

from __future__ import annotations

import numpy as np

from study.config import StudyConfig
from study.contract import COMPARED_METRICS
from study.stats.seeds import format_spread, mean_and_spread, regimes_in_order

ARM_COLUMNS = (*COMPARED_METRICS, "fid_floor")


def summarize_arms(config: StudyConfig, rows: list[dict]) -> list[dict]:
    """Per regime and arm: mean and sample standard deviation over the completed seeds."""
    out = []
    done = [r for r in rows if r["phase"] == "ablation" and r["status"] == "completed"]
    for regime in regimes_in_order(rows):
        for arm, overrides in config.ablation.arms.items():
            group = [r for r in done if r["regime"] == regime and r["role"] == arm]
            entry = {"regime": regime, "arm": arm, "overrides": ", ".join(f"{k}={v}" for k, v in overrides.items()),
                     "seeds": len(group)}
            for metric in ARM_COLUMNS:
                entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean_and_spread(
                    [r[metric] for r in group if r.get(metric) is not None])
            out.append(entry)
    return out


def arms_markdown(summary: list[dict]) -> str:
    header = ["regime", "arm", "seeds", *(("FID floor" if m == "fid_floor" else m) for m in ARM_COLUMNS), "overrides"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in summary:
        cells = [format_spread(e[f"{m}_mean"], None if m == "fid_floor" else e[f"{m}_std"]) for m in ARM_COLUMNS]
        lines.append(f"| {e['regime']} | {e['arm']} | {e['seeds']} | " + " | ".join(cells) + f" | {e['overrides']} |")
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
