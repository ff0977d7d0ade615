"""An ablation's report: per regime and arm, each compared metric's mean and spread over training seeds."""

from __future__ import annotations

from study.config import StudyConfig
from study.contract import COMPARED_METRICS, Phase, Status
from study.report.formatting import spread
from study.stats.seeds import mean_and_spread, regimes_in_order

ARM_COLUMNS = (*COMPARED_METRICS, "fid_floor")


def summarize_arms(config: StudyConfig, rows: list[dict]) -> list[dict]:
    """Per regime and arm: mean and sample standard deviation over the completed seeds."""
    out = []
    done = [r for r in rows if r["phase"] == Phase.ABLATION and r["status"] == Status.COMPLETED]
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
        cells = [spread(e[f"{m}_mean"], None if m == "fid_floor" else e[f"{m}_std"]) for m in ARM_COLUMNS]
        lines.append(f"| {e['regime']} | {e['arm']} | {e['seeds']} | " + " | ".join(cells) + f" | {e['overrides']} |")
    lines += ["", "Means ± sample standard deviation over training seeds, every arm at the same budget and seeds."]
    return "\n".join(lines) + "\n"

