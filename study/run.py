"""`python study/run.py`: run a ScoreAug study (default: study/configs/demo.yaml, offline, a few minutes on 2 CPUs)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.config import ConfigError, load_study_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python study/run.py", description=__doc__)
    parser.add_argument("--config", help="study YAML (default: study/configs/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one config value, e.g. --set search.trials_per_regime=8 (repeatable)")
    parser.add_argument("--address", help="Ray cluster: 'auto' or ray://host:port (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study in the same output folder")
    parser.add_argument("--dry-run", action="store_true", help="validate the config, print the plan and its cost, "
                        "list every problem that would stop a real run; start nothing")
    parser.add_argument("--output", help="output folder (default: ./studies/<name>)")
    return parser.parse_args(argv)


def browse_hint(tracking_uri: str) -> str:
    """How to look at the runs: a tracking server is opened in a browser (from elsewhere through an SSH tunnel to
    its host); a local store is served by `mlflow ui`, its URI quoted so that the line pastes into a shell."""
    if tracking_uri.startswith(("http://", "https://")):
        from urllib.parse import urlparse

        server = urlparse(tracking_uri)
        port = server.port or (443 if server.scheme == "https" else 80)
        return (f"a browser at {tracking_uri} (from another machine through an SSH tunnel: "
                f"ssh -N -L {port}:{server.hostname}:{port} <user>@<head>, then {server.scheme}://127.0.0.1:{port})")
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"


def error_line(err: Exception) -> str:
    """The one stderr line of a problem: config errors say so; the rest say what failed."""
    return f"config error: {err}" if isinstance(err, ConfigError) else f"error: {err}"


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"output={args.output}"] if args.output else [])
    try:
        config = load_study_config(args.config, overrides)
    except ConfigError as err:
        print(error_line(err), file=sys.stderr)
        return 2
    from study.driver.console import quiet_libraries
    from study.driver.lease import StudyLocked
    from study.driver.plan import PlanError
    from study.driver.runner import PhaseInterrupted, StudyError
    from study.driver.signals import INTERRUPTED_EXIT, RESUME_LINE
    from study.tracking.mlflow_runs import TrackingError
    from trainables.data import DatasetError

    quiet_libraries()
    try:
        return dry_run(config, args.address) if args.dry_run else run(config, args.address, args.resume)
    except (ConfigError, PlanError, StudyError, StudyLocked, TrackingError, DatasetError) as err:
        print(error_line(err), file=sys.stderr)
    except (KeyboardInterrupt, PhaseInterrupted):
        print(RESUME_LINE, file=sys.stderr)
        return INTERRUPTED_EXIT
    return 2


def dry_run(config, address: str | None) -> int:
    """The plan and its cost, then every problem a real start would stop at (exit 2 if any); nothing is started."""
    from study.driver.plan import describe, dry_run_plan
    from study.driver.preflight import study_problems
    from study.driver.ray_cluster import planning_nodes, runs_remotely

    problems = study_problems(config, on_this_machine=not runs_remotely(config, address))
    plan, plan_problems = dry_run_plan(config, planning_nodes(config, address), data_problem=bool(problems))
    print(describe(config, plan))
    if runs_remotely(config, address):
        print("  (resources are checked against the cluster at launch)")
    for err in problems + plan_problems:
        print(error_line(err), file=sys.stderr)
    return 2 if problems or plan_problems else 0


def run(config, address: str | None, resume: bool) -> int:
    """The study; exit 1 when too many of its trials failed (the last line counts them by reason)."""
    from study.driver.runner import run_study, study_failures

    output = run_study(config, address=address, resume=resume)
    print(f"report: {output / 'report'} (results: {output / 'results.parquet'})")
    print(f"browse: {browse_hint(config.tracking_uri)}")
    failures = study_failures(output)
    if failures.too_many(config.failures.max_fraction):
        print(f"error: {failures.line()} (more than failures.max_fraction={config.failures.max_fraction:g})", file=sys.stderr)
        return 1
    print(failures.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
