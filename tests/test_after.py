"""After the study (`python -m study.after`): generate from a trial folder, an MLflow run and a registered model,
identical to the trial's own sampler; FID and memorization of a folder equal the trial's; bad models refused in
one line, and loading never unpickles code. One tiny trial (trainables.train, no Ray) serves every test."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_TRIAL

SAMPLES = 32  # the tiny trial's eval.num_samples: the samples its fid and memorization are measured on


@pytest.fixture(scope="module")
def trial(tmp_path_factory) -> Path:
    """A finished tiny trial with FID on, trained on 20 images."""
    from trainables.train import main

    folder = tmp_path_factory.mktemp("after") / "trial"
    overrides = [o for o in TINY_TRIAL if o != "eval.fid=false"] + ["eval.fid=true", "regime_images=20"]
    assert main(["--output", str(folder), *[arg for o in overrides for arg in ("--set", o)]]) == 0
    return folder


def _final(trial: Path) -> dict:
    return json.loads((trial / "metrics.jsonl").read_text().splitlines()[-1])


def _after(*args) -> int:
    from study.after.__main__ import main

    return main([str(a) for a in args])


def _trials_own_samples(trial: Path, count: int) -> torch.Tensor:
    """The first `count` eval samples of the trial's last checkpoint, drawn by the trainer's own Evaluator."""
    from trainables.checkpoint import load_checkpoint
    from trainables.config import TrialConfig
    from trainables.data import load_dataset
    from trainables.loop import Evaluator, trial_regime
    from trainables.loss import build_trial_denoiser

    checkpoint = sorted((trial / "checkpoints").glob("kimg-*"))[-1]
    saved = load_checkpoint(checkpoint)
    config = TrialConfig.model_validate(json.loads(saved["config"]))
    dataset = load_dataset(config.dataset)
    net = build_trial_denoiser(config, dataset.resolution, dataset.channels)
    net.load_state_dict(saved["ema"])
    evaluator = Evaluator(config, dataset, trial_regime(config, dataset), torch.device("cpu"))
    return evaluator.generate(net.eval(), count, rank=0, world=1)


def _read(path: Path) -> torch.Tensor:
    from trainables.sample_files import read_images

    return read_images(path)[0]


@pytest.fixture(scope="module")
def generated(trial, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generated") / "images"
    assert _after("generate", "--model", trial, "--seeds", f"0-{SAMPLES - 1}", "--outdir", out, "--subdirs") == 0
    return out


def test_generate_from_a_trial_folder_is_the_trials_own_sampler(trial, generated):
    assert sorted(p.relative_to(generated).as_posix() for p in generated.rglob("*.png"))[:2] == ["000000/000000.png", "000000/000001.png"]
    assert torch.equal(_read(generated), _trials_own_samples(trial, SAMPLES))


def test_generate_resumes_and_writes_npz(trial, generated, tmp_path):
    folder = tmp_path / "resumed"
    assert _after("generate", "--model", trial, "--seeds", "0-9", "--outdir", folder) == 0
    (folder / "000004.png").unlink()  # as if interrupted
    before = (folder / "000003.png").stat().st_mtime_ns
    assert _after("generate", "--model", trial, "--seeds", "0-9", "--outdir", folder) == 0
    assert (folder / "000003.png").stat().st_mtime_ns == before  # kept, not redrawn
    assert torch.equal(_read(folder), _read(generated)[:10])
    npz = tmp_path / "samples.npz"
    assert _after("generate", "--model", trial, "--seeds", f"0-{SAMPLES - 1}", "--outdir", npz) == 0
    with np.load(npz) as data:
        assert data["arr_0"].shape == (SAMPLES, 8, 8, 1) and list(data["seeds"]) == list(range(SAMPLES))
    assert torch.equal(_read(npz), _read(generated))


def test_fid_of_a_generated_folder_is_the_trials_fid(generated, trial, capsys):
    from study.after.fid import fid

    result = fid(generated, "digits")
    assert result["fid"] == pytest.approx(_final(trial)["fid"], rel=1e-12, abs=1e-12)
    assert result["fid_test"] == pytest.approx(_final(trial)["fid_test"], rel=1e-12, abs=1e-12)
    assert (result["feature_network"], result["num_samples"], result["protocol"]) == ("digits-cnn", SAMPLES, f"N={SAMPLES} vs digits train")
    assert _after("fid", "--images", generated, "--ref", "digits", "--full") == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"holds {SAMPLES} images; the full protocol is 50000" in error


def test_memorization_of_a_folder_is_the_trials_and_copies_count_as_copies(trial, generated, tmp_path):
    from study.after.memorization import audit, training_set
    from trainables.sample_files import write_batch

    report, _ = audit(generated, {"model": str(trial)})
    assert report["memorization"] == _final(trial)["memorization"] and report["num_samples"] == SAMPLES
    images, labels, _ = training_set({"dataset": "digits", "images": 20})
    assert torch.equal(images, training_set({"model": str(trial)})[0])  # the study's regime, drawn the same way
    copies = tmp_path / "copies"
    write_batch(copies, list(range(len(images))), images, subdirs=False)
    assert _after("memorization", "--samples", copies, "--dataset", "digits", "--images", 20, "--json", tmp_path / "a.json",
                  "--figure", tmp_path / "a.png") == 0
    written = json.loads((tmp_path / "a.json").read_text())
    assert written["memorization"] == 1.0 and all(s["ratio"] == 0.0 and s["copy"] for s in written["per_sample"])
    assert set(written["memorization_class"]) == {str(k) for k in labels.tolist()}
    assert (tmp_path / "a.png").stat().st_size > 0


def test_memorization_streams_in_blocks():
    """Blocks of samples give the distances of one block: large folders need not hold N x M distances."""
    from trainables.metrics import nearest_training_images

    generator = torch.Generator().manual_seed(0)
    samples = torch.randint(0, 256, (300, 1, 8, 8), dtype=torch.uint8, generator=generator)
    train = torch.randint(0, 256, (200, 1, 8, 8), dtype=torch.uint8, generator=generator)
    whole, blocks = nearest_training_images(samples, train, k=2), nearest_training_images(samples, train, k=2, chunk=7)
    assert torch.equal(whole.indices, blocks.indices) and torch.allclose(whole.values, blocks.values)


@pytest.fixture(scope="module")
def mlflow_model(trial, tmp_path_factory):
    """The trial's model logged as a run's model/ artifact and registered, the way a study does it."""
    from mlflow.tracking import MlflowClient

    from study.tracking.models import MODEL_ARTIFACT, ModelChoice, register_models
    from trainables.model_file import export_model

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("after", artifact_location=(folder / "mlartifacts").as_uri())
    run = client.create_run(experiment)
    for path in export_model(sorted((trial / "checkpoints").glob("kimg-*"))[-1], folder / "models" / "t0"):
        client.log_artifact(run.info.run_id, str(path), MODEL_ARTIFACT)
    client.set_terminated(run.info.run_id)
    [registered] = register_models(client, [ModelChoice("after-baseline", "near-n50", run.info.run_id)])
    assert register_models(client, [ModelChoice("after-baseline", "near-n50", run.info.run_id)]) == [registered]
    assert len(client.search_model_versions("name = 'after-baseline'")) == 1  # registering again adds no version
    return uri, f"runs:/{run.info.run_id}", registered


@pytest.mark.parametrize("which", [1, 2], ids=["run", "registered_model"])
def test_generate_from_mlflow_is_the_trials_own_sampler(mlflow_model, generated, tmp_path, which):
    uri, source = mlflow_model[0], mlflow_model[which]
    out = tmp_path / "from_mlflow"
    assert _after("generate", "--model", source, "--tracking-uri", uri, "--seeds", f"0-{SAMPLES - 1}", "--outdir", out) == 0
    assert torch.equal(_read(out), _read(generated))


def _refusal(capsys, model: Path) -> str:
    assert _after("generate", "--model", model, "--seeds", "0-1", "--outdir", model.parent / "out") == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error, error
    return error


def test_corrupt_and_foreign_checkpoints_are_refused_in_one_line(tmp_path, capsys, trial):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for garbage in (b"PK\x03\x04 not a checkpoint" * 10, b"\x80\x02 truncated"):
        (corrupt / "checkpoint.pt").write_bytes(garbage)
        assert "is unreadable" in _refusal(capsys, corrupt)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(3)}}, foreign / "checkpoint.pt")
    assert "it was not written by this trainer" in _refusal(capsys, foreign)
    other_net = tmp_path / "other_net"
    from trainables.model_file import export_model

    export_model(sorted((trial / "checkpoints").glob("kimg-*"))[-1], other_net)
    state = torch.load(other_net / "model.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if "dec" not in k}, other_net / "model.pt")
    assert "its weights do not fit the network of its config" in _refusal(capsys, other_net)
    (tmp_path / "empty").mkdir()
    assert "no model.pt and no checkpoint.pt" in _refusal(capsys, tmp_path / "empty")
    assert "does not exist" in _refusal(capsys, tmp_path / "missing")


class _Payload:
    """Unpickling this runs code: it writes a file. A safe loader never lets it."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_loading_never_unpickles_code(tmp_path, capsys, trial):
    from trainables.checkpoint import load_checkpoint

    payload = _Payload()
    payload.marker = tmp_path / "code_ran"
    saved = load_checkpoint(sorted((trial / "checkpoints").glob("kimg-*"))[-1])
    for name, state in (("checkpoint.pt", {**saved, "ema": payload}), ("model.pt", {"model.enc.8x8_conv.weight": payload})):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        torch.save(state, folder / name)
        if name == "model.pt":
            (folder / "model.json").write_text(json.dumps({"format": "scoreaug-model/1", "weights": "ema", "config": {}}))
        assert "holds pickled Python objects" in _refusal(capsys, folder)
        assert not payload.marker.exists()
    torch.load(folder / name, weights_only=False)  # the payload is real: an unsafe load runs it
    assert payload.marker.read_text() == "code ran"
