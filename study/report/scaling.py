"""The scaling part of a study's report: where memorization starts as data shrinks, per arm and capacity.

Arms are the seeded re-runs a study makes for comparison: the confirmation phase's baseline and best
ScoreAug config, or an ablation's arms. Their per-trial curve statistics become memorization-vs-N curves,
N50 and EMM with bootstrap intervals, onset-vs-N fits and ScoreAug's data multiplier (study/stats/scaling.py);
the tables here and the figures (study/report/figures/) show them. A search's trials enter only the Pareto fronts: they ran one
seed each, under a searcher that chose them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from study.config import StudyConfig
from study.contract import Phase, Status
from study.report.formatting import MISSING, interval, number, spread
from study.stats.scaling import non_dominated, scaling_summary

ARM_PHASES = (Phase.CONFIRM, Phase.ABLATION)


@dataclass
class ScalingReport:
    markdown: str
    summary: dict
    artifacts: list[Path] = field(default_factory=list)
    parent_metrics: dict[str, float] = field(default_factory=dict)


def arm_rows(rows: list[dict]) -> list[dict]:
    """The completed seeded re-runs, in the shape the estimators take (arm, capacity, images, seed, statistics)."""
    return [{**row, "arm": row["role"], "images": row["images_in_regime"]}
            for row in rows if row["phase"] in ARM_PHASES and row["status"] == Status.COMPLETED]


def curves(records: list[dict], rows: list[dict]) -> list[dict]:
    """Each arm trial's eval points, for the curves-against-kimg figure."""
    by_id = {row["trial_id"]: row for row in arm_rows(rows)}
    return [{"arm": by_id[r["trial_id"]]["arm"], "capacity": by_id[r["trial_id"]]["capacity"],
             "images": by_id[r["trial_id"]]["images"], "seed": by_id[r["trial_id"]]["seed"], "history": r.get("history", [])}
            for r in records if r["trial_id"] in by_id]


def pareto_fronts(config: StudyConfig, rows: list[dict]) -> list[dict]:
    """Per searched cell: every completed trial in the plane of the two objectives (the search's own, or its
    metric against memorization_max), feasible ones marked, and which of those no other feasible one dominates."""
    names = config.search.objective_names[:2] if config.search.objectives else [config.search.metric, "memorization_max"]
    limit = config.search.max_memorization
    fronts = []
    for cell in dict.fromkeys(r["regime"] for r in rows if r["phase"] == Phase.SEARCH):
        done = [r for r in rows if r["phase"] == Phase.SEARCH and r["regime"] == cell and r["status"] == Status.COMPLETED
                and all(r.get(n) is not None for n in names)]
        if not done:
            continue
        feasible = [limit is None or r["memorization_max"] is None or r["memorization_max"] <= limit for r in done]
        points = [[r[n] for n in names] for r, ok in zip(done, feasible) if ok]
        optimal = iter(non_dominated(points, config.search.mode))
        fronts.append({"regime": cell, "images": done[0]["images_in_regime"], "objectives": names,
                       "trials": [{"values": [r[n] for n in names], "feasible": ok, "pareto": ok and next(optimal),
                                   "role": r["role"]} for r, ok in zip(done, feasible)]})
    return fronts


def nearest_pairs(output: Path, rows: list[dict]) -> tuple[dict[str, Path], int | None]:
    """Per arm, the last samples-beside-nearest-training-image grid of its first seed in the smallest cell."""
    arms = arm_rows(rows)
    if not arms:
        return {}, None
    smallest = min((r["capacity"], r["images"]) for r in arms)
    pairs = {}
    for row in sorted((r for r in arms if (r["capacity"], r["images"]) == smallest), key=lambda r: r["seed"]):
        grids = sorted((output / "samples" / row["trial_id"] / "nearest").glob("kimg-*.png"))
        if grids and row["arm"] not in pairs:
            pairs[row["arm"]] = grids[-1]
    return pairs, smallest[1]


def per_size_markdown(summary: dict) -> str:
    """Per capacity, size and arm: memorization with its interval, onset, and sample quality with and without copies."""
    lines = ["| capacity | images | arm | seeds | memorization (max) | onset kimg (median) | best fid_test | "
             "best fid_test while copying < threshold (seeds) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(summary["per_size"], key=lambda r: (r["capacity"], r["images"], r["arm"])):
        onset = number(row["onset_kimg_median"]) if row["onset_kimg_median"] is not None else "not reached"
        lines.append(
            f"| {row['capacity'] or MISSING} | {row['images']} | {row['arm']} | {row['seeds']} "
            f"| {interval(row['memorization_max_mean'], row['memorization_max_low'], row['memorization_max_high'])} "
            f"| {onset} ({row['onset_reached']} of {row['onset_reached'] + row['onset_censored']}) "
            f"| {spread(row['best_fid_test_mean'], row['best_fid_test_std'])} "
            f"| {spread(row.get('uncopied_fid_test_mean'), row.get('uncopied_fid_test_std'))} ({row.get('uncopied_seeds', 0)}) |")
    return "\n".join(lines) + "\n"


def scaling_markdown(summary: dict) -> str:
    """The per-arm scaling table and the data multipliers, as markdown for the report."""
    lines = ["| capacity | arm | N50 | EMM | onset slope (kimg per image) | onset intercept (kimg) | onset points / censored |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary["per_arm"]:
        lines.append(
            f"| {row['capacity'] or MISSING} | {row['arm']} "
            f"| {interval(row['n50'], row['n50_low'], row['n50_high'], row['n50_bound'], row['n50_defined'])} "
            f"| {interval(row['emm'], row['emm_low'], row['emm_high'], row['emm_bound'], row['emm_defined'])} "
            f"| {interval(row['onset_slope'], row['onset_slope_low'], row['onset_slope_high'])} "
            f"| {interval(row['onset_intercept'], row.get('onset_intercept_low'), row.get('onset_intercept_high'))} "
            f"| {row['onset_points']} / {row['onset_censored']} |")
    lines += ["", "| capacity | arm | reference | data multiplier |", "| --- | --- | --- | --- |"]
    for row in summary["multipliers"]:
        multiplier = (f">= {number(row['lower_bound'])}" if row["lower_bound"] is not None
                      else interval(row["data_multiplier"], row["low"], row["high"], defined=row["defined"]))
        lines.append(f"| {row['capacity'] or MISSING} | {row['arm']} | {row['reference']} | {multiplier} |")
    lines += ["", "Intervals are 95% percentile bootstrap intervals over training seeds (resampled within each "
                  "size, fixed bootstrap seed); censored onsets are excluded from the onset fits.", "", per_size_markdown(summary)]
    return "\n".join(lines) + "\n"


def metric_name(*parts: str) -> str:
    """An MLflow metric name from arm and capacity labels (letters, digits, '_', '-', '.', '/')."""
    return ".".join(re.sub(r"[^A-Za-z0-9_.\-/]", "", p) for p in parts if p)


def parent_metrics(summary: dict) -> dict[str, float]:
    """The headline statistics for the study's parent run: N50, EMM, onset slope and data multiplier per arm."""
    metrics = {}
    for entry in summary["per_arm"]:
        for stat in ("n50", "emm", "onset_slope"):
            for suffix in ("", "_low", "_high"):
                value = entry.get(f"{stat}{suffix}")
                if value is not None:
                    metrics[metric_name(f"{stat}{suffix}", entry["arm"], entry["capacity"])] = value
    for entry in summary["multipliers"]:
        for key in ("data_multiplier", "low", "high", "lower_bound"):
            value = entry.get(key)
            if value is not None:
                name = key if key == "data_multiplier" else f"data_multiplier_{key}"
                metrics[metric_name(name, entry["arm"], entry["capacity"])] = value
    return metrics


def write_scaling_report(config: StudyConfig, output: Path, rows: list[dict], records: list[dict]) -> ScalingReport:
    from study.report.figures import curves_figure, nearest_figure, pareto_figure, scaling_figure

    folder = output / "report"
    chosen = arm_rows(rows)
    scaling = config.scaling
    summary = scaling_summary(chosen, n_boot=scaling.bootstrap, seed=scaling.bootstrap_seed, reference_arm=scaling.reference_arm)
    (folder / "scaling.json").write_text(json.dumps(summary, indent=1))
    floors = [r["fid_floor"] for r in chosen if r.get("fid_floor") is not None]
    figures = curves_figure(curves(records, rows), folder, threshold=scaling.onset_threshold)
    figures += scaling_figure(summary, folder, fid_floor=sum(floors) / len(floors) if floors else None,
                              onset_threshold=scaling.onset_threshold)
    figures += pareto_figure(pareto_fronts(config, rows), folder)
    pairs, smallest = nearest_pairs(output, rows)
    figures += nearest_figure(pairs, smallest, folder) if pairs else []
    if chosen:
        markdown = (f"## Where memorization starts\n\n![scaling](scaling.png)\n\n{scaling_markdown(summary)}\n"
                    f"Memorization is Gu et al.'s ratio (nearest training image closer than 1/3 of the second nearest), "
                    f"its maximum over eval points; onset is the first kimg at which it reaches "
                    f"{scaling.onset_threshold:g}.\n\n")
    else:
        markdown = "## Where memorization starts\n\nNo seeded re-run completed, so there are no scaling statistics.\n\n"
    markdown += "".join(f"![{p.stem}]({p.name})\n" for p in figures if p.name != "scaling.png")
    return ScalingReport(markdown, summary, [folder / "scaling.json", *figures], parent_metrics(summary))
