"""The published grid study read by the adaptive design's model, beside an adaptive study's own estimates.

The grid's N50s and multiplier (docs/results.md) come from per-size means interpolated on log N with bootstrap
intervals over 3 seeds, which covered 52-77% of the time in bench/design_simulation.py. This refits the grid's
trials with the model the design uses (study/stats/memorization_model.py), so the two runs are compared by one
estimator. The grid study's folder is not shipped, so its trials are rebuilt from the per-size mean and sample SD
it published (studies/scaling/report/summary.md at commit ce835fd, the per-size table of docs/results.md): three
seeds at m - s, m and m + s have exactly that mean and SD. A binomial logistic fit depends on the trials only
through the per-size totals, so the estimates are the grid's; the overdispersion sees the SDs, not the seeds.

    python docs/grid_model_check.py studies/scaling-adaptive
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.report.formatting import model_interval  # noqa: E402
from study.stats import memorization_model as model  # noqa: E402
from study.stats.design_summary import estimates  # noqa: E402

# images -> (mean, sample SD) of memorization_max over seeds 1000-1002, as published; 0 from 180 images on.
PUBLISHED_GRID = {
    "baseline": {22: (0.999, 0.002), 45: (0.846, 0.043), 90: (0.398, 0.024)},
    "scoreaug_fixed": {22: (0.889, 0.034), 45: (0.154, 0.022), 90: (0.001, 0.002)},
}
UNCOPIED_SIZES = (180, 360, 719, 1438)


def grid_observations(samples: int = 256) -> list[model.Observation]:
    observations = []
    for arm, sizes in PUBLISHED_GRID.items():
        for images, (mean, sd) in sizes.items():
            for value in (mean - sd, mean, mean + sd):
                copies = round(min(max(value, 0.0), 1.0) * samples)
                observations.append(model.Observation(arm, images, copies / samples, samples=samples))
        observations += [model.Observation(arm, images, 0.0, samples=samples) for images in UNCOPIED_SIZES for _ in range(3)]
    return observations


def _cells(final: dict) -> list[str]:
    per_arm = {e["arm"]: e for e in final["per_arm"]}
    multiplier = next(m for m in final["multipliers"] if m["arm"] == "scoreaug_fixed")
    n50 = [model_interval(per_arm[a]["n50"], per_arm[a]["n50_low"], per_arm[a]["n50_high"], per_arm[a]["n50_bound"])
           for a in ("baseline", "scoreaug_fixed")]
    return n50 + [model_interval(multiplier["data_multiplier"], multiplier["data_multiplier_low"],
                                 multiplier["data_multiplier_high"], multiplier["data_multiplier_bound"])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adaptive", nargs="?", type=Path, help="an adaptive study's folder (its report/design.json)")
    args = parser.parse_args(argv)
    rows = [("grid, published (bootstrap over seeds)", ["76.9 [74.6, 79.1]", "32.1 [31.5, 32.7]", "2.39 [2.32, 2.48]"]),
            ("grid, refitted with the design's model", _cells(estimates(grid_observations(), "baseline")))]
    if args.adaptive:
        final = json.loads((args.adaptive / "report" / "design.json").read_text())[""]["final"]
        rows.append((f"adaptive ({args.adaptive.name}), the model", _cells(final)))
    print("| estimate | baseline N50 | scoreaug_fixed N50 | data multiplier |\n| --- | --- | --- | --- |")
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
