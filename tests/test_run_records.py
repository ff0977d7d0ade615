"""What a trial's MLflow run holds, built without a server: tags, params in batches, eval-point metrics, the closing
batch (a censored onset is a tag, never a number), and the calls a resumed driver replays."""

from study.contract import Phase, Role
from study.phases.suggestion import Suggestion
from study.tracking.calls import CreateRun, LogBatch, Terminate
from study.tracking.records import PARAMS_PER_CALL, closing_batch, metric_batch, param_batches, run_status, run_tags, trial_params
from study.tracking.replay import Holdings, replay_calls

SUGGESTION = Suggestion(cell="n18-model_channels16", regime_fraction=1.0, regime_images=18, images=18,
                        capacity="model_channels=16", role=Role.BEST, seed=1001, optuna_study="s-n18", optuna_trial=4)


def test_tags_say_where_the_run_belongs_and_which_arm_it_is():
    tags = run_tags(SUGGESTION, "t_00007", Phase.CONFIRM, "parent123")
    assert tags == {"mlflow.parentRunId": "parent123", "regime": "n18-model_channels16", "images": "18",
                    "capacity": "model_channels=16", "trial_id": "t_00007", "searcher": "confirmation", "phase": "confirm",
                    "role": "best", "optuna_trial": "4"}
    assert run_tags(Suggestion(cell="r1", regime_fraction=1.0, role="leaky"), "t", Phase.ABLATION, "p")["optuna_trial"] == ""


def test_params_come_in_batches_under_the_server_limit_and_an_invalid_trial_keeps_what_it_asked():
    params = {f"key{i:03d}": i for i in range(2 * PARAMS_PER_CALL + 5)} | {"model.channel_mult": [1, 2]}
    batches = param_batches(params)
    assert [len(b.params) for b in batches] == [PARAMS_PER_CALL, PARAMS_PER_CALL, 6]
    assert {p.key: p.value for b in batches for p in b.params}["model.channel_mult"] == "[1, 2]"
    invalid = Suggestion(cell="n18", regime_fraction=1.0, overrides={"score_augment.p": 2.0}, invalid="p too large")
    assert trial_params(invalid, {}) == {"score_augment.p": 2.0}


def test_eval_point_metrics_and_the_closing_batch():
    batch = metric_batch({"kimg": 0.128, "train_loss": 0.5, "fid": None, "memorization": 0.25, "other": 3.0}, 128)
    assert {(m.key, m.value, m.step) for m in batch.metrics} == {("kimg", 0.128, 128), ("train_loss", 0.5, 128),
                                                                  ("memorization", 0.25, 128)}
    record = {"status": "early_stopped", "last_step": 256, "reason": "",
              "curve": {"memorization_max": 0.05, "memorization_onset_kimg": None, "memorization_onset_censored": True}}
    closing = closing_batch(record)
    assert [(m.key, m.step) for m in closing.metrics] == [("memorization_max", 256)]  # no number for a censored onset
    assert {(t.key, t.value) for t in closing.tags} == {("status", "early_stopped"), ("memorization_onset", "not reached")}
    assert run_status("early_stopped") == "FINISHED" and run_status("diverged") == "FAILED" and run_status("odd") == "FAILED"


def test_replay_sends_only_what_mlflow_lacks():
    record = {"run_id": "r1", "params": {"a": 1}, "status": "completed", "last_step": 256, "curve": {},
              "history": [{"kimg": 0.128, "train_loss": 1.0}, {"kimg": 0.256, "train_loss": 0.9}]}
    calls = replay_calls(record, Holdings(steps=frozenset({128}), terminated=False, params_logged=True))
    assert [type(c) for c in calls] == [LogBatch, LogBatch, Terminate]
    assert [m.step for m in calls[0].batch.metrics] == [256, 256] and calls[2] == Terminate("FINISHED")
    assert replay_calls({**record, "closed": True}, Holdings()) == []
    unmade = replay_calls({**record, "run_id": None}, Holdings())
    assert unmade[0] == CreateRun(find_first=True) and len(unmade) == 1 + 1 + 2 + 2


def test_a_restored_callback_logs_where_the_resuming_driver_tracks(tmp_path):
    """Tune restores the callback it pickled; a study resumed by a new job may reach the same store at a new
    address (a Slurm job's port), and the restored callback must log there, not to the old one."""
    import pickle

    from study.tracking.callback import MlflowTrialCallback, TrialRules
    from study.tracking.run_writer import ParentRun

    old, new = ParentRun("http://127.0.0.1:5001", "1", "parent"), ParentRun("http://127.0.0.1:6002", "1", "parent")
    callback = MlflowTrialCallback(old, tmp_path / "trials_search.jsonl", "search", TrialRules(1.0, 0.1, {}), tmp_path)
    try:
        MlflowTrialCallback.resume_parent = new
        restored = pickle.loads(pickle.dumps(callback))
    finally:
        MlflowTrialCallback.resume_parent = None
    assert restored.writer.parent == new and restored.writer.ledger is restored.ledger
