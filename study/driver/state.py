"""The study's state file: which study an output folder holds, the parent MLflow run and the phase reached.

`study_state.json` is what makes a study resumable: `--resume` continues from the recorded phase (Tune's own
experiment state resumes unfinished trials from their checkpoints), and only with the config it started with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from study.config import StudyConfig
from study.contract import STATE_FILE, study_phases
from trainables.files import write_text_atomic


class StudyError(RuntimeError):
    """A study-level problem worded for one line on stderr."""


def search_fingerprint(config: StudyConfig) -> str:
    """What a resumed study must share with the original: everything but the output and tracking locations."""
    # Keys added since a study began are left out while unset, so a study started by earlier code still resumes.
    unset_since = {"design"} if config.design is None else set()
    relevant = config.model_dump(exclude={"output", "tracking", "storage_path", "failures"} | unset_since)
    relevant["resources"] = {k: v for k, v in relevant["resources"].items() if k in ("num_workers",)}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def load_state(output: Path, config: StudyConfig, resume: bool) -> dict:
    """The recorded state, or a new one at the study's first phase; refuses a mismatch with what was asked."""
    path = output / STATE_FILE
    if path.exists():
        state = json.loads(path.read_text())
        if not resume:
            raise StudyError(f"{output} already holds study {state.get('name')!r}; pass --resume to continue it, "
                             "or choose another --output or name")
        if state["fingerprint"] != search_fingerprint(config):
            raise StudyError(f"the config differs from the one {output} was started with (search space, regimes, budget "
                             "or trial settings changed); resume with the original config or start a new study")
        if state["phase"] not in study_phases(config.kind):  # an ablation killed before it first left "search"
            state["phase"] = study_phases(config.kind)[0]
        return state
    if resume:
        raise StudyError(f"nothing to resume in {output}: no {STATE_FILE}; run without --resume to start the study")
    return {"name": config.name, "fingerprint": search_fingerprint(config), "phase": study_phases(config.kind)[0]}


def save_state(output: Path, state: dict) -> None:
    write_text_atomic(output / STATE_FILE, json.dumps(state, indent=1))


def forget_state(output: Path) -> None:
    """A study that never launched a trial is not one to resume: the same command simply starts it again."""
    (output / STATE_FILE).unlink(missing_ok=True)


@contextmanager
def held_output(config: StudyConfig, log=print) -> Iterator[Path]:
    """The output folder, made and leased to this driver for as long as the block runs. The lease file is the first
    thing written there (a second driver is refused before it changes anything), and so the probe for writing."""
    from study.driver.lease import StudyLease

    output = config.output_dir
    lease = StudyLease(output, log=log)
    try:
        output.mkdir(parents=True, exist_ok=True)
        lease.__enter__()
    except OSError as err:
        raise StudyError(f"cannot write to output folder {output}: {err.strerror}; choose another with --output") from None
    try:
        yield output
    finally:
        lease.release()
