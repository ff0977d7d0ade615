"""The few numbers a study ends with on the terminal: what the user came for. The full report stays in report/."""

from __future__ import annotations

from study.contract import Role
from study.report.design import failed_arm_line
from study.report.formatting import interval, model_interval, spread


def scaling_headline(summary: dict) -> list[str]:
    """Per arm (and capacity) N50 with its interval, then each data multiplier (two-sided or a bound)."""
    lines = []
    for entry in summary.get("per_arm", []):
        where = f" at {entry['capacity']}" if entry["capacity"] else ""
        n50 = interval(entry["n50"], entry["n50_low"], entry["n50_high"], entry["n50_bound"], entry["n50_defined"])
        lines.append(f"{entry['arm']}{where}: N50 {n50} images")
    for entry in summary.get("multipliers", []):
        where = f" at {entry['capacity']}" if entry["capacity"] else ""
        if entry.get("lower_bound") is not None:
            value = f">= {interval(entry['lower_bound'], None, None)} (one N50 lies outside the sizes trained)"
        else:
            value = interval(entry["data_multiplier"], entry["low"], entry["high"], defined=entry["defined"])
        lines.append(f"data multiplier of {entry['arm']}{where} (N50 of {entry['reference']} / its N50): {value}")
    return lines


def search_headline(summary: list[dict]) -> list[str]:
    """Per cell, the confirmed best ScoreAug config's fid_test beside the baseline's, mean ± seed spread."""
    def fid_test(entry: dict, role: str) -> str:
        return spread(entry.get(f"{role}_fid_test_mean"), entry.get(f"{role}_fid_test_std"))

    return [f"{entry['regime']}: fid_test baseline {fid_test(entry, Role.BASELINE)}, best ScoreAug {fid_test(entry, Role.BEST)}"
            for entry in summary]


def headline_lines(scaling_summary: dict, search_summary: list[dict]) -> list[str]:
    """N50s and multipliers where the arms were compared across sizes, else the search's confirmed fid_test."""
    lines = scaling_headline(scaling_summary)
    if not scaling_summary.get("multipliers"):
        lines += search_headline(search_summary)
    return lines


def design_headline(summaries: dict[str, dict]) -> list[str]:
    """Per capacity, each arm's model N50 and each multiplier, with what the design spent on them."""
    lines = []
    for capacity, summary in summaries.items():
        where = f" at {capacity}" if capacity else ""
        final = summary["final"] or {"per_arm": [], "multipliers": []}
        for entry in final["per_arm"]:
            spent = summary["cost"][entry["arm"]]
            n50 = model_interval(entry["n50"], entry["n50_low"], entry["n50_high"], entry["n50_bound"])
            lines.append(f"{entry['arm']}{where}: N50 {n50} images ({spent['trials']} trials, {spent['kimg']:,.0f} kimg)")
        for entry in final["multipliers"]:
            value = model_interval(entry["data_multiplier"], entry["data_multiplier_low"], entry["data_multiplier_high"],
                                   entry["data_multiplier_bound"])
            lines.append(f"data multiplier of {entry['arm']}{where} (N50 of {entry['reference']} / its N50): {value}")
        lines += [failed_arm_line(entry, where) for entry in summary.get("failed_arms", [])]
    return lines
