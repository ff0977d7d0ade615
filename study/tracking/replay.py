"""What a resumed driver must still send to MLflow: the part of each ledger record that MLflow lacks.

An earlier driver may have stopped (or been killed) while the server was away: runs not made, params or eval
points not logged, runs not closed. The ledger holds all of it; MLflow is asked what it holds, and only the
difference is sent, so nothing is lost and nothing is logged twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from study.tracking.calls import Call, CallQueue, CreateRun, Discard, LogBatch, Terminate, transient_errors
from study.tracking.ledger import nimg_step
from study.tracking.records import closing_batch, metric_batch, param_batches, run_status


@dataclass(frozen=True)
class Holdings:
    """What MLflow holds of one record's run."""

    steps: frozenset[int] = frozenset()
    terminated: bool = False
    params_logged: bool = False


def holdings(client: MlflowClient, record: dict, uri: str) -> Holdings:
    """Asked of the server; a run not yet made (or made by a driver killed before it saved the id) holds nothing."""
    from study.tracking.mlflow_runs import TrackingError

    if record.get("run_id") is None:
        return Holdings()
    try:
        steps = frozenset(m.step for m in client.get_metric_history(record["run_id"], "kimg"))
        run = client.get_run(record["run_id"])
    except transient_errors() as err:  # guessing would either lose points or log them twice
        raise TrackingError(f"MLflow at {uri} did not answer while the study resumed ({str(err).splitlines()[0][:200]}); "
                            "run --resume again once it is reachable: every metric is kept in the ledger") from None
    return Holdings(steps, run.info.status != "RUNNING", len(run.data.params) >= len(record["params"]))


def replay_calls(record: dict, held: Holdings) -> list[Call]:
    """The calls that bring MLflow up to the record: the run, its params, the eval points it lacks, the closing."""
    if record.get("closed"):
        return []
    calls: list[Call] = [CreateRun(find_first=True)] if record.get("run_id") is None else []
    if not held.params_logged:  # logging a param again with the same value is allowed: no harm if some made it
        calls += [LogBatch(batch) for batch in param_batches(record["params"])]
    for point in record["history"]:
        step = nimg_step(point.get("kimg", 0.0))
        if step not in held.steps:
            calls.append(LogBatch(metric_batch(point, step)))
    if record.get("status") and not held.terminated:
        calls += [LogBatch(closing_batch(record)), Terminate(run_status(record["status"]))]
    return calls


def replay_queue(writer, ledger) -> tuple[CallQueue, dict[str, set[int]]]:
    """A queue filled with what the ledger holds and MLflow lacks (nothing, for a new phase), lost trials' runs to
    discard included; and, per trial, the eval points MLflow holds or the replay queued."""
    queue, logged = CallQueue(writer), {}
    for trial_id, record in ledger.records.items():
        if not record.get("closed"):
            held = holdings(writer.client, record, writer.parent.uri)
            logged[trial_id] = logged_steps(record, held)
            for call in replay_calls(record, held):
                queue.queue(trial_id, call)
    for trial_id, record in ledger.lost.items():
        if not record.get("closed"):
            queue.queue(trial_id, Discard())
    return queue, logged


def logged_steps(record: dict, held: Holdings) -> set[int]:
    """The eval points that need no logging by the live callback: held by MLflow, or queued by the replay."""
    return set(held.steps) | {nimg_step(point.get("kimg", 0.0)) for point in record["history"]}
