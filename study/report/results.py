"""Results and the report: results.parquet, per-regime summaries with seed spread, their tables and figures.

Everything is built from the tracking records the driver kept for each trial (one per trial,
across resumes), so the table covers every trial exactly once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from study.config import StudyConfig, optuna_url
from study.faults import FaultPoint, fault_point
from study.contract import (COMPARED_METRICS, REPORTED_METRICS, STATE_FILE, TRIAL_PHASES, UNFINISHED, Phase, Role, Status,
                            status_counts, study_phases)
from study.phases.suggestion import Suggestion
from study.report.copies import confirmed_models, model_choices
from study.report.cost import cost_markdown
from study.report.formatting import MISSING, spread
from study.stats.scaling import curve_statistics
from study.stats.seeds import mean_and_spread, regimes_in_order
from study.tracking.ledger import LOG_NAME, load_records, records_file
from study.tracking.models import ModelChoice

# A trial's row: every metric it reports, at its last eval point (kimg and the eval's cost have columns of their own).
FINAL_METRICS = tuple(m for m in REPORTED_METRICS if m not in ("kimg", "eval_seconds"))
CURVE_KEYS = frozenset(curve_statistics([]))  # what this code's curve statistics hold


def _records(output: Path) -> list[dict]:
    return [{"trial_id": trial_id, **record} for phase in TRIAL_PHASES
            for trial_id, record in load_records(output, phase).items()]


def _value(value):
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def _train_seconds(history: list[dict]) -> float | None:
    """Time spent in training steps: images per eval interval over that interval's throughput."""
    total, previous = 0.0, 0.0
    for entry in history:
        if entry.get("img_per_sec"):
            total += (entry["kimg"] - previous) * 1000 / entry["img_per_sec"]
            previous = entry["kimg"]
    return total or None


def _curve(record: dict, threshold: float) -> dict:
    """The curve statistics the ledger stored when the trial ended (study config's threshold), unless this code
    computes more than they hold (an older ledger): then again from the eval points, so the report gains them."""
    stored = record.get("curve") or {}
    return stored if CURVE_KEYS <= stored.keys() else curve_statistics(record.get("history", []), threshold)


def results_rows(config: StudyConfig, records: list[dict], pool: int) -> list[dict]:
    from trainables.data import regime_size

    rows = []
    for record in records:
        suggestion, history = Suggestion.from_tune(record["suggestion"]), record.get("history", [])
        last = history[-1] if history else {}
        row = {
            "trial_id": record["trial_id"],
            "phase": record["phase"],
            "regime": suggestion.cell,
            "regime_fraction": suggestion.regime_fraction,
            "images_in_regime": suggestion.images or regime_size(pool, suggestion.regime_fraction),
            "capacity": suggestion.capacity,
            "role": suggestion.role,
            "seed": suggestion.seed,
            "optuna_trial": suggestion.optuna_trial,
            "status": record.get("status", UNFINISHED),
            "failure_reason": record.get("reason", ""),
            "wall_time_s": (record.get("ended") or record["started"]) - record["started"],
            "trial_started_at": record["started"],
            "startup_s": record["first_step_at"] - record["started"] if record.get("first_step_at") else None,
            "train_time_s": _train_seconds(history),
            # first training step to the trial's end: training plus its own evaluations, without start-up
            "loop_time_s": record["ended"] - record["first_step_at"] if record.get("ended") and record.get("first_step_at") else None,
            "eval_time_s": sum(h.get("eval_seconds") or 0.0 for h in history) or None,
            "kimg": last.get("kimg", record.get("failure", {}).get("kimg")),  # a failure with no eval point: where it failed
            "mlflow_run_id": record["run_id"],
        }
        for name in FINAL_METRICS:
            value = last.get(name)
            row[name] = float(value) if isinstance(value, (int, float)) else None
        row.update(_curve(record, config.scaling.onset_threshold))
        gaps = [h["loss_gap"] for h in history if isinstance(h.get("loss_gap"), (int, float)) and math.isfinite(h["loss_gap"])]
        row["best_loss_gap"] = min(gaps) if gaps else None
        for key, value in record.get("params", {}).items():
            row[f"param.{key}"] = _value(value)
        rows.append(row)
    return rows


def _table(rows: list[dict]) -> pa.Table:
    columns = sorted({k for row in rows for k in row}, key=lambda k: (k.startswith("param."), k))
    return pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])


def summarize(rows: list[dict]) -> list[dict]:
    """Per regime: confirmed best ScoreAug vs baseline, mean and spread over seeds, and whether the gap exceeds it."""
    from scipy import stats

    out = []
    confirm = [r for r in rows if r["phase"] == Phase.CONFIRM and r["status"] == Status.COMPLETED]
    for regime in regimes_in_order(rows):
        mine = [r for r in confirm if r["regime"] == regime]
        any_row = next(r for r in rows if r["regime"] == regime)
        entry = {"regime": regime, "regime_fraction": any_row["regime_fraction"], "images_in_regime": any_row["images_in_regime"]}
        for role in (Role.BEST, Role.BASELINE):
            group = [r for r in mine if r["role"] == role]
            entry[f"{role}_seeds"] = len(group)
            for metric in COMPARED_METRICS:
                entry[f"{role}_{metric}_mean"], entry[f"{role}_{metric}_std"] = mean_and_spread(
                    [r[metric] for r in group if r[metric] is not None])
        floors = [r["fid_floor"] for r in mine if r["fid_floor"] is not None]
        entry["fid_floor"] = float(np.mean(floors)) if floors else None
        b, s = entry.get("baseline_fid_mean"), entry.get("best_fid_mean")
        entry["fid_relative_improvement"] = (b - s) / b if b and s is not None else None
        best_f = [r["fid"] for r in mine if r["role"] == Role.BEST and r["fid"] is not None]
        base_f = [r["fid"] for r in mine if r["role"] == Role.BASELINE and r["fid"] is not None]
        if len(best_f) >= 2 and len(base_f) >= 2:
            entry["fid_welch_p"] = float(stats.ttest_ind(best_f, base_f, equal_var=False).pvalue)
            spread = (entry["best_fid_std"] or 0) + (entry["baseline_fid_std"] or 0)
            entry["fid_difference_exceeds_spread"] = bool(abs(b - s) > spread)
        else:
            entry["fid_welch_p"] = None
            entry["fid_difference_exceeds_spread"] = None
        out.append(entry)
    return out


def _roles(entry: dict, metric: str, seed_spread: bool = True, between: str = " | ") -> str:
    """Baseline's then best ScoreAug's mean of `metric`, each with its seed spread where asked."""
    return between.join(spread(entry[f"{role}_{metric}_mean"], entry[f"{role}_{metric}_std"] if seed_spread else None)
                        for role in (Role.BASELINE, Role.BEST))


def summary_markdown(summary: list[dict], notes: list[str]) -> str:
    lines = ["| regime | images | FID baseline | FID best ScoreAug | FID floor | FID test baseline | FID test best | "
             "loss gap baseline | loss gap best | memorization base / best | leakage base / best | rel. FID gain | exceeds spread |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        rel = e.get("fid_relative_improvement")
        lines.append(
            f"| {e['regime']} | {e['images_in_regime']} | {_roles(e, 'fid')} | {spread(e['fid_floor'], None)} | "
            f"{_roles(e, 'fid_test')} | {_roles(e, 'loss_gap')} | {_roles(e, 'memorization', False, ' / ')} | "
            f"{_roles(e, 'leakage', False, ' / ')} | {MISSING if rel is None else f'{rel:+.1%}'} | "
            f"{e['fid_difference_exceeds_spread']} |")
    lines.append("")
    lines.append("Means ± sample standard deviation over confirmation seeds; FID compared only at equal sample count and feature space.")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def first_seed_curves(records: list[dict]) -> list[dict]:
    """Each confirmed trial of the lowest seed, for the loss-gap curves: one line per cell and role."""
    confirmed = [r for r in records if r["phase"] == Phase.CONFIRM]
    first = min((r["suggestion"].get("seed", 0) for r in confirmed), default=None)
    return [{"label": f"{r['suggestion']['regime']} {r['suggestion']['role']}", "role": r["suggestion"]["role"],
             "history": r.get("history", [])} for r in confirmed if r["suggestion"].get("seed") == first]


def best_configs(config: StudyConfig, rows: list[dict], folder: Path) -> list[Path]:
    """Per cell, the config confirmation re-ran (the searched trial its `optuna_trial` names), else the searched
    trial best in the first objective."""
    paths = []
    metric = config.confirm.pick_by or config.search.objective_names[0]
    search = [r for r in rows if r["phase"] == Phase.SEARCH and r["status"] == Status.COMPLETED and r["role"] != Role.BASELINE
              and r.get(metric) is not None]
    confirmed = {(r["regime"], r["optuna_trial"]) for r in rows if r["phase"] == Phase.CONFIRM and r["role"] == Role.BEST}
    choose = min if config.search.mode == "min" else max
    for regime in regimes_in_order(search):
        mine = [r for r in search if r["regime"] == regime]
        best = next((r for r in mine if (regime, r["optuna_trial"]) in confirmed), None) or choose(mine, key=lambda r: r[metric])
        params = {k.removeprefix("param."): v for k, v in best.items() if k.startswith("param.")}
        path = folder / f"best_config_{regime}.json"
        path.write_text(json.dumps({"trial_id": best["trial_id"], metric: best[metric], "config": params}, indent=1))
        paths.append(path)
    return paths


def param_importances(config: StudyConfig, output: Path, regimes: list[str]) -> dict[str, dict[str, float]]:
    """Per regime, Optuna's fANOVA importance of each searched parameter that every finished trial has.

    With a handful of trials per regime these are rough; a regime with too few finished trials is left out."""
    import optuna

    from study.contract import study_name
    from study.phases.searcher import optuna_storage

    storage = optuna_storage(optuna_url(output))
    found = {}
    for regime in regimes:
        try:
            study = optuna.load_study(study_name=study_name(config.name, regime), storage=storage)
            importance = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=(lambda t: t.values[0]) if len(study.directions) > 1 else None)
        except (KeyError, RuntimeError, ValueError):  # no such study, too few finished trials, or nothing varies
            continue
        if importance:
            found[regime] = {k: float(v) for k, v in importance.items()}
    return found


def importances_markdown(importances: dict[str, dict[str, float]]) -> str:
    if not importances:
        return "No regime finished enough trials for parameter importances.\n"
    params = sorted({p for imp in importances.values() for p in imp})
    lines = ["| regime | " + " | ".join(params) + " |", "|---|" + "---|" * len(params)]
    for regime, imp in importances.items():
        lines.append(f"| {regime} | " + " | ".join(f"{imp[p]:.2f}" if p in imp else MISSING for p in params) + " |")
    lines.append("")
    lines.append("Optuna fANOVA importance of each searched parameter for the search metric, per regime (sums to 1); "
                 "parameters that only some trials have (conditional ones) are not rated.")
    return "\n".join(lines) + "\n"


@dataclass
class StudyReport:
    """What a written report hands back: its files, the statistics for the parent run, and the headline lines."""

    artifacts: list[Path]
    parent_metrics: dict[str, float]
    headline: list[str]
    round_metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # an adaptive design's, by round
    models: list[ModelChoice] = field(default_factory=list)  # the trained models to register in MLflow


def incomplete_note(output: Path, records: list[dict]) -> str | None:
    """Why these results are not a finished study's, or None: its state is still in a trial phase (interrupted,
    or still running), or a trial has no end. The report says so first, so a partial answer is never read as final."""
    state = output / STATE_FILE
    phase = json.loads(state.read_text()).get("phase") if state.is_file() else None
    open_trials = sum(1 for record in records if "status" not in record)
    reasons = ([f"it stopped in its {phase} phase"] if phase in TRIAL_PHASES else []) + \
        ([f"{open_trials} of {len(records)} trials have no end ({UNFINISHED})"] if open_trials else [])
    if not reasons:
        return None
    return (f"Incomplete study: {' and '.join(reasons)}; these results cover only what ran. "
            "Finish it with `python study/run.py --resume` (same config), then report again.")


def write_report(config: StudyConfig, output: Path) -> StudyReport:
    """Write results.parquet and the report (report/summary.md, or report/ablation.md for an ablation); an
    unfinished study's report and headline say first that it is incomplete."""
    records = _records(output)
    report = _write_results_and_report(config, output, records)
    note = incomplete_note(output, records)
    if note:
        markdown = output / "report" / ("ablation.md" if config.ablation else "summary.md")
        markdown.write_text(f"**{note}**\n\n" + markdown.read_text())
        report.headline.insert(0, note)
    return report


def _write_results_and_report(config: StudyConfig, output: Path, records: list[dict]) -> StudyReport:
    from study.report.figures import loss_gap_curves_figure, size_figures
    from study.report.headline import headline_lines
    from study.report.scaling import write_scaling_report
    from trainables.data import pool_size

    rows = results_rows(config, records, pool_size(config.trial.dataset, config.trial.data_path))
    pq.write_table(_table(rows), output / "results.parquet")
    fault_point(FaultPoint.REPORT_WRITING)
    report = output / "report"
    report.mkdir(exist_ok=True)
    scaling = write_scaling_report(config, output, rows, records)
    if config.ablation:
        artifacts = _write_ablation_report(config, rows, output, report, scaling.markdown)
        return StudyReport(artifacts + scaling.artifacts, scaling.parent_metrics, headline_lines(scaling.summary, []))
    if config.design:
        return _write_design_report(config, rows, records, output)
    summary = summarize(rows)
    pq.write_table(pa.Table.from_pylist(summary), report / "summary.parquet")
    markdown = summary_markdown(summary, status_counts([r["status"] for r in rows]))
    importances = param_importances(config, output, [e["regime"] for e in summary])
    (report / "importances.json").write_text(json.dumps(importances, indent=1))
    markdown += "\n" + scaling.markdown
    markdown += "\n## Which searched parameters mattered\n\n" + importances_markdown(importances)
    (report / "summary.md").write_text(markdown + "\n" + cost_markdown(rows))
    artifacts = [output / "results.parquet", report / "summary.parquet", report / "summary.md", report / "importances.json"]
    artifacts += size_figures(summary, report) + loss_gap_curves_figure(first_seed_curves(records), report)
    artifacts += best_configs(config, rows, report)
    models = model_choices(config.name, confirmed_models(records), output / "models")
    return StudyReport(artifacts + scaling.artifacts, scaling.parent_metrics, headline_lines(scaling.summary, summary), models=models)


def _write_design_report(config: StudyConfig, rows: list[dict], records: list[dict], output: Path) -> StudyReport:
    """An adaptive design's report/summary.md: the model's N50s and multipliers first, then what the search found."""
    from study.report.design import write_design_report
    from study.report.headline import design_headline

    report = output / "report"
    design = write_design_report(config, records, report)
    markdown = design.markdown + "\n".join(f"- {note}" for note in status_counts([r["status"] for r in rows])) + "\n"
    if config.design.searched_arm:
        importances = param_importances(config, output, sorted({r["regime"] for r in rows if r["phase"] == Phase.SEARCH}))
        markdown += "\n## Which searched parameters mattered\n\n" + importances_markdown(importances)
    (report / "summary.md").write_text(markdown + "\n" + cost_markdown(rows))
    artifacts = [output / "results.parquet", report / "summary.md", *design.artifacts]
    return StudyReport(artifacts, {}, design_headline(design.summary), design.round_metrics,
                       model_choices(config.name, design.kept, output / "models"))


def _write_ablation_report(config: StudyConfig, rows: list[dict], output: Path, report: Path, scaling_markdown: str) -> list[Path]:
    from study.report.ablation import arms_markdown, summarize_arms
    from study.report.figures import arms_figure

    summary = summarize_arms(config, rows)
    pq.write_table(pa.Table.from_pylist(summary), report / "ablation.parquet")
    notes = [f"- {note}" for note in status_counts([r["status"] for r in rows])]
    markdown = arms_markdown(summary) + "\n".join(notes) + "\n\n" + scaling_markdown + "\n" + cost_markdown(rows)
    (report / "ablation.md").write_text(markdown)
    return [output / "results.parquet", report / "ablation.parquet", report / "ablation.md", *arms_figure(summary, report)]


def ledger_problem(config: StudyConfig, output: Path) -> str | None:
    """Why the ledgers cannot give this folder's results, or None: there is none, or results.parquet holds trials of
    a phase whose ledger is gone. Rewritten from them, the results would lose those trials."""
    phases = [phase for phase in study_phases(config.kind) if phase in TRIAL_PHASES]
    kept = {phase for phase in phases if records_file(output, phase).exists()}
    results = output / "results.parquet"
    reported = set(pq.read_table(results, columns=["phase"]).column("phase").to_pylist()) if results.is_file() else set()
    missing = sorted((reported - kept) if kept else set(phases))
    if not missing:
        return None
    names = ", ".join(LOG_NAME.format(phase=phase) for phase in missing)
    return (f"{output} lacks the trial ledger {names}: nothing to rebuild "
            f"{'its trials' if kept else 'results'} from; results.parquet and report/ are left as they are")


def main(argv=None) -> int:
    """`python -m study.report STUDY_FOLDER`: rewrite a finished study's results.parquet and report from its ledger
    with this code, e.g. to give an older study the statistics added since. MLflow is not touched."""
    import argparse
    import sys

    from study.config import ConfigError, load_study_config

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the study's output folder (holds study_config.yaml and trials_*.jsonl)")
    args = parser.parse_args(argv)
    if not (args.study / "study_config.yaml").is_file():
        parser.error(f"{args.study} holds no study_config.yaml: not a study's output folder")
    try:
        config = load_study_config(str(args.study / "study_config.yaml"))
    except ConfigError as err:
        print(f"config error: {args.study / 'study_config.yaml'}: {err}", file=sys.stderr)
        return 2
    problem = ledger_problem(config, args.study)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    report = write_report(config, args.study)
    print("\n".join(report.headline))
    return 0

