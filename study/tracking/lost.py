"""Trials the ledger opened but Tune never saved, found once Tune has restored its own state.

The ledger writes a trial's line the moment Tune starts it; Tune saves its experiment state only every several
seconds. A driver killed in between (SIGKILL, an OOM kill, a lost head node) leaves a record that no Tune trial
will ever finish: `--resume` restores Tune's state from before that trial, and its searcher (restored with it)
places the same trial again under a new id. Left alone, the record would keep the phase from ever ending. So at
the first step of every phase's Tune run, a record that has not ended and whose id is not among Tune's trials is
closed as lost (ledger.Ledger.lose), and its MLflow run, if one was made, is discarded. One mechanism for every
phase: what was re-placed is decided by the phase's searcher; the ledger only stops waiting for the old id.
"""

from __future__ import annotations

from collections.abc import Iterable

from study.tracking.calls import CallQueue, Discard
from study.tracking.ledger import Ledger

LOST_REASON = "the driver stopped before Tune saved this trial; it was placed again under a new id"


def lost_trials(records: dict[str, dict], tune_trial_ids: Iterable[str]) -> list[str]:
    """Ids of records that have not ended and that Tune does not hold: no one will ever finish them."""
    known = set(tune_trial_ids)
    return [trial_id for trial_id, record in records.items() if "status" not in record and trial_id not in known]


def close_lost_trials(ledger: Ledger, queue: CallQueue, tune_trial_ids: Iterable[str]) -> list[str]:
    """Close every lost record of the phase and discard its run (queued through an outage like any call)."""
    lost = lost_trials(ledger.records, tune_trial_ids)
    for trial_id in lost:  # first: a call below flushes the queue, which must not make their runs
        queue.drop(trial_id)  # what the replay queued for it: its run is discarded instead
    for trial_id in lost:
        ledger.lose(trial_id, LOST_REASON)
        queue.call(trial_id, Discard())
    return lost
