"""`python -m study.report FOLDER` rebuilds results from the ledgers, so it refuses a folder whose ledgers cannot give
them (the results stay as they were), and the report of an unfinished study says first that it is incomplete."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from study.config import load_study_config
from study.phases.suggestion import Suggestion
from study.report.results import main as report_main
from study.tracking.ledger import Ledger
from tests.conftest import GRID_CONFIG, ROOT, TINY_TRIAL

TOTAL_KIMG = 0.256


def _study_folder(path, phase: str = "done"):
    """A searched study's folder as its driver leaves it: the config, the state, results and a report."""
    config = load_study_config(GRID_CONFIG, [f"trial.{s}" for s in TINY_TRIAL] + ["search.metric=test_loss",
                                                                                "search.max_memorization=null"])
    path.mkdir()
    (path / "study_config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    (path / "study_state.json").write_text(json.dumps({"name": config.name, "fingerprint": "x", "phase": phase}))
    (path / "report").mkdir()
    (path / "report" / "summary.md").write_text("the report of 6 trials\n")
    rows = [{"trial_id": f"t{i}", "phase": "search" if i < 4 else "confirm"} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), path / "results.parquet")
    return path


def _trial(ledger: Ledger, trial_id: str, ended: bool) -> None:
    ledger.open(trial_id, "search", Suggestion(cell="n18", regime_fraction=1.0, images=18, role="baseline", seed=0), {}, {})
    for kimg in (0.128, TOTAL_KIMG if ended else None):
        if kimg:
            ledger.add_point(trial_id, {"kimg": kimg, "train_loss": 0.5, "test_loss": 0.6, "loss_gap": 0.1})
    if ended:
        ledger.finish(trial_id, False, "", TOTAL_KIMG, 0.1)


def _files(folder) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_a_folder_without_its_ledgers_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    folder = _study_folder(tmp_path / "study")
    before = _files(folder)
    result = subprocess.run([sys.executable, "-m", "study.report", str(folder)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {folder} lacks the trial ledger trials_confirm.jsonl, trials_search.jsonl: nothing to rebuild results "
        "from; results.parquet and report/ are left as they are"]
    assert _files(folder) == before


def test_results_of_a_phase_whose_ledger_is_gone_are_not_overwritten(tmp_path, capsys):
    folder = _study_folder(tmp_path / "study")
    _trial(Ledger(folder / "trials_search.jsonl"), "t0", ended=True)
    before = _files(folder)
    assert report_main([str(folder)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {folder} lacks the trial ledger trials_confirm.jsonl: nothing to rebuild its trials from; "
        "results.parquet and report/ are left as they are"]
    assert _files(folder) == before


@pytest.mark.parametrize("phase, ended, reasons", [
    ("search", True, "it stopped in its search phase"),
    ("done", False, "1 of 2 trials have no end (unfinished)"),
    ("search", False, "it stopped in its search phase and 1 of 2 trials have no end (unfinished)"),
    ("done", True, None),
], ids=["phase_not_done", "trial_without_status", "both", "finished"])
def test_the_report_of_an_unfinished_study_says_first_that_it_is_incomplete(tmp_path, capsys, phase, ended, reasons):
    folder = _study_folder(tmp_path / "study", phase)
    (folder / "results.parquet").unlink()
    ledger = Ledger(folder / "trials_search.jsonl")
    _trial(ledger, "t0", ended=True)
    _trial(ledger, "t1", ended=ended)
    assert report_main([str(folder)]) == 0
    printed, summary = capsys.readouterr().out.splitlines(), (folder / "report" / "summary.md").read_text()
    assert pq.read_table(folder / "results.parquet").num_rows == 2
    if reasons is None:
        assert "Incomplete" not in summary and not any("Incomplete" in line for line in printed)
        return
    note = (f"Incomplete study: {reasons}; these results cover only what ran. Finish it with "
            "`python study/run.py --resume` (same config), then report again.")
    assert summary.startswith(f"**{note}**\n\n") and printed[0] == note
