"""The report of an adaptive scaling design: each arm's N50, EMM and data multiplier from the fitted model, what
each arm cost, how the estimates converged round by round, N50 against training time, and the design figure.

Model-based statistics sit beside (never in place of) the per-size statistics of scaling.json: a design places
sizes one trial at a time, so there are no seed groups per size to bootstrap over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from study.config import StudyConfig
from study.contract import Phase, Role, Status
from study.phases.cells import capacity_axis, capacity_label, capacity_number, capacity_values
from study.phases.suggestion import Suggestion
from study.report.copies import KeptModel, copies_figures, copies_markdown, design_models
from study.report.formatting import model_interval, number
from study.report.scaling import metric_name
from study.stats import design_summary
from study.stats.design_summary import DesignTrial
from study.stats.scaling import curve_statistics

KEPT = (Status.COMPLETED, Status.EARLY_STOPPED)


@dataclass
class DesignReport:
    markdown: str = ""
    summary: dict = field(default_factory=dict)  # capacity -> the design's statistics
    artifacts: list[Path] = field(default_factory=list)
    # (round, metrics): the model's N50s and multipliers after each round; the last round's are the final ones
    round_metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    kept: list[KeptModel] = field(default_factory=list)  # the models kept per arm and capacity (study/report/copies.py)


def design_trials(records: list[dict], samples: int) -> dict[str, list[DesignTrial]]:
    """Per capacity, the design's ended trials with their memorization curves, in the order they were placed."""
    trials: dict[str, list[DesignTrial]] = {}
    for record in sorted(records, key=lambda r: r["started"]):
        if record["phase"] != Phase.DESIGN or record.get("status") not in KEPT:
            continue
        suggestion = Suggestion.from_tune(record["suggestion"])
        points = tuple((h["kimg"], h["memorization"]) for h in record["history"]
                       if isinstance(h.get("memorization"), (int, float)) and math.isfinite(h["memorization"]))
        if points:
            trial = DesignTrial(suggestion.role, suggestion.images, suggestion.round or 0, points,
                                record["history"][-1]["kimg"], samples, curve_statistics(record["history"])["best_fid_test"])
            trials.setdefault(suggestion.capacity, []).append(trial)
    return trials


def failed_arms(records: list[dict], capacity: str) -> list[dict]:
    """The design's arms at one capacity none of whose trials ended with a memorization value (every one failed):
    they have no N50, and the report says so instead of leaving them out without a word."""
    by_arm: dict[str, list[dict]] = {}
    for record in records:
        suggestion = Suggestion.from_tune(record["suggestion"])
        if record["phase"] == Phase.DESIGN and suggestion.capacity == capacity and record.get("status"):
            by_arm.setdefault(suggestion.role, []).append(record)
    return [{"arm": arm, "trials": len(mine), "reason": f"{mine[-1]['status']}: {mine[-1].get('reason') or 'no reason'}"[:160]}
            for arm, mine in by_arm.items() if all(Status(r["status"]).failed for r in mine)]


def failed_arm_line(entry: dict, where: str = "") -> str:
    return (f"{entry['arm']}{where}: no N50: all {entry['trials']} of its trials failed ({entry['reason']}); "
            "the design stopped placing it")


def summarize_design(config: StudyConfig, trials: list[DesignTrial]) -> dict:
    """The final estimates read at the budget's last eval point (a trial stopped before it is censored there)."""
    reference, slope, total = Role.BASELINE.value, config.design.slope, config.trial.train.total_kimg
    last = max(k for t in trials for k, _ in t.points)
    return {"final": design_summary.estimates([t.observation(last) for t in trials], reference, slope),
            "by_round": design_summary.by_round(trials, last, reference, slope),
            "by_kimg": design_summary.by_kimg(trials, reference, slope),
            "cost": design_summary.cost(trials, total),
            "fid_cost": design_summary.fid_cost(trials, reference),
            "placements": [{"arm": t.arm, "images": t.images, "round": t.round, "memorization_max": t.memorization_max,
                            "censored": t.last_kimg < total - 1e-6} for t in trials]}


def headline_metrics(estimates: dict | None, capacity: str) -> dict[str, float]:
    """Each arm's model N50 and each multiplier with their intervals, as MLflow metric names."""
    metrics = {}
    for entry in (estimates or {}).get("per_arm", []):
        for key in ("n50", "n50_low", "n50_high"):
            if entry.get(key) is not None:
                metrics[metric_name(f"model_{key}", entry["arm"], capacity)] = entry[key]
    for entry in (estimates or {}).get("multipliers", []):
        for key in ("data_multiplier", "data_multiplier_low", "data_multiplier_high"):
            if entry.get(key) is not None:
                metrics[metric_name(f"model_{key}", entry["arm"], capacity)] = entry[key]
    return metrics


def _estimate(entry: dict, name: str) -> str:
    return model_interval(entry[name], entry[f"{name}_low"], entry[f"{name}_high"], entry[f"{name}_bound"])


def design_markdown(capacity: str, summary: dict) -> str:
    where = f" at {capacity}" if capacity else ""
    final = summary["final"] or {"per_arm": [], "multipliers": []}
    lines = [f"### The adaptive design{where}", "", "| arm | trials | trial-kimg | stopped as decided | N50 | EMM |",
             "| --- | --- | --- | --- | --- | --- |"]
    for entry in final["per_arm"]:
        spent = summary["cost"][entry["arm"]]
        lines.append(f"| {entry['arm']} | {spent['trials']} | {number(spent['kimg'])} | {spent['stopped_decided']} "
                     f"| {_estimate(entry, 'n50')} | {_estimate(entry, 'emm')} |")
    lines += ["", *[f"- {failed_arm_line(entry)}" for entry in summary.get("failed_arms", [])]]
    lines += ["", "| arm | data multiplier (N50 of baseline / its N50) |", "| --- | --- |"]
    lines += [f"| {m['arm']} | {_estimate(m, 'data_multiplier')} |" for m in final["multipliers"]]
    lines += ["", *_fid_cost_lines(summary.get("fid_cost", []))]
    lines += ["N50 against training time (the same trials, memorization_max up to each eval kimg):", "",
              "| kimg | " + " | ".join(f"N50 {e['arm']}" for e in final["per_arm"]) + " | multipliers |",
              "|---|" + "---|" * (len(final["per_arm"]) + 1)]
    for row in summary["by_kimg"]:
        arms = {e["arm"]: e for e in row.get("per_arm", [])}
        cells = [_estimate(arms[a], "n50") if a in arms else "-" for a in (e["arm"] for e in final["per_arm"])]
        cells.append("; ".join(f"{m['arm']} {_estimate(m, 'data_multiplier')}" for m in row.get("multipliers", [])) or "-")
        lines.append(f"| {number(row['kimg'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fid_cost(entry: dict | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['fid_cost']:+.1f} [{entry['fid_cost_low']:+.1f}, {entry['fid_cost_high']:+.1f}]"


def _fid_cost_lines(costs: list[dict]) -> list[str]:
    """The arms' sample-quality price at sizes where nobody copies (study/stats/design_summary.py, fid_cost)."""
    if not costs:
        return ["FID cost where nobody copies: too few trials without a copied sample to estimate it.", ""]
    return [("FID cost where nobody copies (best fid_test minus the baseline's among trials that copied no sample, "
             "adjusted for log N; 95% interval):"), "", "| arm | FID cost | trials without copies (arm / baseline) |",
            "| --- | --- | --- |",
            *[f"| {c['arm']} | {_fid_cost(c)} | {c['trials']} / {c['reference_trials']} |" for c in costs], ""]


def capacity_markdown(summaries: dict[str, dict]) -> str:
    """The capacity answer in one table: per capacity, each arm's N50, its multiplier and its FID cost."""
    finals = {capacity: s["final"] or {"per_arm": [], "multipliers": []} for capacity, s in summaries.items()}
    arms = sorted({m["arm"] for final in finals.values() for m in final["multipliers"]})
    lines = ["### By capacity", "", "| capacity | N50 baseline | " + " | ".join(
        f"N50 {a} | data multiplier {a} | FID cost {a} where nobody copies" for a in arms) + " |",
        "|---|---|" + "---|---|---|" * len(arms)]
    for capacity, final in finals.items():
        n50 = {e["arm"]: _estimate(e, "n50") for e in final["per_arm"]}
        multiplier = {m["arm"]: _estimate(m, "data_multiplier") for m in final["multipliers"]}
        cost = {c["arm"]: c for c in summaries[capacity].get("fid_cost", [])}
        cells = [f"{n50.get(a, '-')} | {multiplier.get(a, '-')} | {_fid_cost(cost.get(a))}" for a in arms]
        lines.append(f"| {capacity} | {n50.get(Role.BASELINE.value, '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", *_trend_lines(finals, arms)]) + "\n"


def _trend_lines(finals: dict[str, dict], arms: list[str]) -> list[str]:
    """How each N50 and each multiplier change per doubling of a numeric capacity (design_summary.trend_per_doubling)."""
    values = {capacity: capacity_number(capacity) for capacity in finals}
    if None in values.values():
        return []
    axis = capacity_axis(next(iter(finals)))
    quantities = [(f"N50 of {a}", "per_arm", "n50", a) for a in [Role.BASELINE.value, *arms]]
    quantities += [(f"Data multiplier of {a}", "multipliers", "data_multiplier", a) for a in arms]
    lines = []
    for label, key, name, arm in quantities:
        points = [(values[capacity], e[name], e[f"{name}_low"], e[f"{name}_high"])
                  for capacity, final in finals.items() for e in final[key] if e["arm"] == arm]
        trend = design_summary.trend_per_doubling(points)
        if trend:
            lines.append(f"- {label} per doubling of {axis}: x{trend['factor_per_doubling']:.3f} [{trend['low']:.3f}, "
                         f"{trend['high']:.3f}]")
    if lines:
        lines.append("\n(A weighted fit of the log estimate on log2 capacity over the capacities with two-sided "
                     "intervals; 95% interval.)")
    return lines


def write_design_report(config: StudyConfig, records: list[dict], folder: Path) -> DesignReport:
    """design.json, the design and phase-diagram figures, and the model's headline numbers, per capacity."""
    import json

    from study.report.figures import capacity_figure, design_figure, n50_kimg_figure

    report = DesignReport()
    by_capacity = design_trials(records, config.trial.eval.num_samples)
    for capacity in (label for label in map(capacity_label, capacity_values(config)) if label in by_capacity):
        trials = by_capacity[capacity]
        summary = report.summary[capacity] = summarize_design(config, trials)
        summary["failed_arms"] = failed_arms(records, capacity)
        report.markdown += design_markdown(capacity, summary) + "\n"
        report.round_metrics += [(row["round"], headline_metrics(row, capacity)) for row in summary["by_round"]]
    if not report.summary:
        return report
    (folder / "design.json").write_text(json.dumps(report.summary, indent=1))
    report.artifacts = [folder / "design.json", *design_figure(report.summary, folder), *n50_kimg_figure(report.summary, folder)]
    if len(report.summary) > 1:
        drawn = capacity_figure(report.summary, folder)
        report.artifacts += drawn
        report.markdown += "".join(f"![the estimates against capacity]({p.name})\n\n" for p in drawn)
        report.markdown += capacity_markdown(report.summary) + "\n"
    report.markdown = "## The adaptive design\n\n![design](design.png)\n\n![N50 against training time](n50_kimg.png)\n\n" + report.markdown
    report.kept = design_models(records, report.summary)
    copies = copies_figures(report.kept, folder.parent / "models", folder)
    report.artifacts += copies
    report.markdown += copies_markdown(copies, config.name)
    return report
