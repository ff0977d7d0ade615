"""`python study/run.py`: run a ScoreAug study (default: study/configs/demo.yaml, offline, a few minutes on 2 CPUs)."""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--dry-run", action="store_true", help="validate the config and print the plan; start nothing")
    parser.add_argument("--output", help="output folder (default: ./studies/<name>)")
    return parser.parse_args(argv)


def browse_hint(tracking_uri: str) -> str:
    """How to look at the runs: a tracking server is opened in a browser (from elsewhere through an SSH tunnel to
    its host); a local store is served by `mlflow ui`."""
    if tracking_uri.startswith(("http://", "https://")):
        from urllib.parse import urlparse

        server = urlparse(tracking_uri)
        port = server.port or (443 if server.scheme == "https" else 80)
        return (f"a browser at {tracking_uri} (from another machine through an SSH tunnel: "
                f"ssh -N -L {port}:{server.hostname}:{port} <user>@<head>, then {server.scheme}://127.0.0.1:{port})")
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"output={args.output}"] if args.output else [])
    try:
        config = load_study_config(args.config, overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from study.driver.plan import PlanError
    from study.driver.runner import PhaseInterrupted, StudyError
    from study.tracking.callback import TrackingError
    from trainables.data import DatasetError

    try:
        return dry_run(config, args.address) if args.dry_run else run(config, args.address, args.resume)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
    except (PlanError, StudyError, TrackingError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
    except (KeyboardInterrupt, PhaseInterrupted):
        print("interrupted; continue with: python study/run.py --resume (same config)", file=sys.stderr)
        return 130
    return 2


def dry_run(config, address: str | None) -> int:
    """The checks a real start runs before Ray, and the plan; nothing is started or written."""
    from study.driver.plan import describe, make_plan
    from study.driver.preflight import check_study
    from study.driver.runner import local_nodes

    remote = bool(address or os.environ.get("RAY_ADDRESS")) or config.resources.autoscaling
    check_study(config, on_this_machine=not remote)
    print(describe(config, make_plan(config, None if remote else local_nodes(config))))
    if remote:
        print("  (resources are checked against the cluster at launch)")
    return 0


def run(config, address: str | None, resume: bool) -> int:
    """The study; exit 1 when too many of its trials failed (the last line counts them by reason)."""
    from study.driver.runner import run_study, study_failures

    output = run_study(config, address=address, resume=resume)
    print(f"done: {output / 'results.parquet'}, report in {output / 'report'}; "
          f"browse with: {browse_hint(config.tracking_uri)}")
    failures = study_failures(output)
    if failures.too_many(config.failures.max_fraction):
        print(f"error: {failures.line()} (more than failures.max_fraction={config.failures.max_fraction:g})", file=sys.stderr)
        return 1
    print(failures.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
