"""`python -m trainables.train`: one trial in this process, no Ray.

Writes DIR/metrics.jsonl (one JSON object per eval point), DIR/checkpoints/ and DIR/samples/;
`--resume` continues from the newest checkpoint on the same kimg axis.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trainables.checkpoint import CheckpointError
from trainables.config import load_trial_config
from trainables.config_io import ConfigError
from trainables.data import DatasetError
from trainables.loop import TrainingDiverged, run_trial
from trainables.preflight import check_trial
from trainables.session import LocalSession


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainables.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML trial config (keys as in trainables/config.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set score_augment.p=0.5 (repeatable)")
    parser.add_argument("--output", required=True, help="folder for metrics.jsonl, checkpoints/ and samples/")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_trial_config(args.config, args.overrides)
        check_trial(config)
        output = Path(args.output)
        if not args.resume and output.exists() and any(output.iterdir()):
            raise ConfigError(f"--output {output} is not empty; pass --resume to continue it or choose a new folder")
        session = LocalSession(output, config.runtime.device, keep=config.train.checkpoints_kept)
        if args.resume and session.latest_checkpoint() is None:
            print(f"no checkpoint in {output}; starting from scratch", file=sys.stderr)
        (output / "config.json").write_text(json.dumps(config.model_dump(), indent=2))
        run_trial(config, session, log=lambda line: print(line, flush=True))
    except (ConfigError, DatasetError, CheckpointError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:
        print(f"error: cannot write {err.filename}: permission denied; choose another --output", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
