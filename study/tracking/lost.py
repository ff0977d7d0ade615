"""Trials the ledger holds but Tune never saved, found once Tune has restored its own state.

The ledger writes a trial's line the moment Tune starts it, and its end the moment it ends; Tune saves its
experiment state (its trials and its searcher) only every several seconds. A driver killed in between (SIGKILL,
an OOM kill, a lost head node) leaves records of trials that the restored Tune run does not hold: `--resume`
restores Tune's state from before them, and the phase's searcher, restored with it, places them again under new
ids. Left alone, a record that has not ended would keep the phase from ever ending, and one that has would be
counted beside its own re-run. So at the first step of every phase's Tune run, such a record is closed as lost
(ledger.Ledger.lose) and its MLflow run, if one was made, is discarded: the re-placed trial is the one that counts.

One exception: a search phase's ended trial stays. Its Optuna trial was told its value when it ended, and Optuna's
database (not Tune's state) is what the search resumes from, so it is never asked again; an unended one is failed
in Optuna and asked again (study/phases/searcher.py, release_lost_trials).
"""

from __future__ import annotations

from collections.abc import Iterable

from study.contract import Phase
from study.tracking.calls import CallQueue, Discard
from study.tracking.ledger import Ledger

LOST_REASON = "the driver stopped before Tune saved this trial; it was placed again under a new id"


def lost_trials(records: dict[str, dict], tune_trial_ids: Iterable[str], phase: str) -> list[str]:
    """Ids of records that Tune does not hold and that the phase's searcher will place again."""
    known, ended_too = set(tune_trial_ids), phase != Phase.SEARCH
    return [trial_id for trial_id, record in records.items()
            if trial_id not in known and (ended_too or "status" not in record)]


def close_lost_trials(ledger: Ledger, queue: CallQueue, tune_trial_ids: Iterable[str], phase: str) -> list[str]:
    """Close every lost record of the phase and discard its run (queued through an outage like any call)."""
    lost = lost_trials(ledger.records, tune_trial_ids, phase)
    for trial_id in lost:  # first: a call below flushes the queue, which must not make their runs
        queue.drop(trial_id)  # what the replay queued for it: its run is discarded instead
    for trial_id in lost:
        ledger.lose(trial_id, LOST_REASON)
        queue.call(trial_id, Discard())
    return lost
