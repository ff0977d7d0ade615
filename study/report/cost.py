"""What a study spent, from its results table: trials, trial-kimg (the compute an adaptive design saves) and
trial-minutes per phase, and the time from its first trial's start to its last trial's end."""

from __future__ import annotations

from study.report.formatting import number


def _phase_cost(rows: list[dict]) -> tuple[int, float, float]:
    return (len(rows), sum(r["kimg"] or 0.0 for r in rows), sum(r["wall_time_s"] or 0.0 for r in rows) / 60)


def cost_markdown(rows: list[dict]) -> str:
    """One row per phase and a total; empty for a study without trials."""
    if not rows:
        return ""
    lines = ["## What the study cost", "", "| phase | trials | trial-kimg | trial-minutes |", "| --- | --- | --- | --- |"]
    for phase in dict.fromkeys(r["phase"] for r in rows):
        trials, kimg, minutes = _phase_cost([r for r in rows if r["phase"] == phase])
        lines.append(f"| {phase} | {trials} | {number(kimg)} | {minutes:.1f} |")
    trials, kimg, minutes = _phase_cost(rows)
    span = max(r["trial_started_at"] + (r["wall_time_s"] or 0.0) for r in rows) - min(r["trial_started_at"] for r in rows)
    lines += [f"| all | {trials} | {number(kimg)} | {minutes:.1f} |", "",
              f"From the first trial's start to the last trial's end: {span / 60:.1f} min (a resumed study's pauses "
              "included).", ""]
    return "\n".join(lines)
