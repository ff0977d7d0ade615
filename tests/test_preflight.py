"""Inputs that pass every value check but could not run: each is one line on stderr and exit 2 before Ray starts.

The same table runs with `--dry-run` and without it (the real start path), so a dry run can never pass what a
real run rejects at trial start-up. The image-folder loader is tested on real files, broken ones included.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT
from trainables.config import load_trial_config
from trainables.config_io import ConfigError
from trainables.data import DatasetError, dataset_shape, load_image_folder
from trainables.preflight import check_trial


def _folder(path, count=12, size=(16, 16), mode="RGB"):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        channels = {"RGB": 3, "L": 1}[mode]
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
        Image.fromarray(pixels, mode).save(path / f"img_{i:02d}.png")
    return path


def _broken(path, name="broken_07.png"):
    (path / name).write_bytes(b"not a png at all")
    return path / name


def _inputs(tmp_path):
    """(--set values, the words the one error line must contain); folders are made for the cases that need them."""
    corrupt = _folder(tmp_path / "corrupt")
    _broken(corrupt)
    mixed = _folder(tmp_path / "mixed")
    _folder(mixed / "big", count=1, size=(24, 24))
    cuda = [] if torch.cuda.is_available() else [(["trial.runtime.device=cuda"], "runtime.device: cuda, but this machine has no usable CUDA")]
    return [
        (["trial.model.channel_mult=[]"], "trial.model: no U-Net of model_channels=32, channel_mult=[]"),
        (["trial.model.attn_resolutions=[3]", "trial.model.channel_mult=[1,1,1,1,1]"], "trial.model: no U-Net"),
        (["trial.eval.fid_features=nope"], "trial.eval.fid_features: unknown feature space 'nope'"),
        (["trial.eval.fid_features=inception-v3", f"trial.eval.fid_weights={tmp_path / 'none.pt'}"],
         f"trial.eval.fid_weights: Inception weights {tmp_path / 'none.pt'} (from weights_path) do not exist"),
        (["trial.eval.fid_weights=/x.pt"], "trial.eval.fid_weights: digits-cnn uses its shipped weights"),
        (["trial.dataset=synthetic", "trial.eval.fid_features=digits-cnn"], "trial.eval.fid_features: digits-cnn takes 1x8x8 images"),
        (["trial.dataset=image_folder"], "dataset image_folder needs data_path"),
        (["trial.dataset=image_folder", f"trial.data_path={tmp_path / 'absent'}"], f"data_path {tmp_path / 'absent'} is not a folder"),
        (["trial.dataset=image_folder", f"trial.data_path={corrupt}"],
         f"{corrupt / 'broken_07.png'} cannot be read as an image"),
        (["trial.dataset=image_folder", f"trial.data_path={mixed}"], "is 24x24 RGB"),
        (["trial.dataset=cifar10", f"trial.data_path={tmp_path / 'cifar'}"], "CIFAR-10 not found at"),
        (["trial.train.total_kimg=1e400"], "trial.train.total_kimg: Input should be a finite number"),
        (["trial.diffusion.sigma_max=.inf"], "trial.diffusion.sigma_max: Input should be a finite number"),
        (["trial.train.lr=.nan"], "trial.train.lr: Input should be a finite number"),
        (["scaling.onset_threshold=.nan"], "scaling.onset_threshold: Input should be a finite number"),
        (["capacities={model.channel_mult: [[1, 1], []]}"], "capacities model.channel_mult=[]: trial.model: no U-Net"),
        *cuda,
    ]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-start"])
def test_inputs_that_cannot_run_fail_in_one_line_before_ray_starts(tmp_path, dry_run):
    failures = []
    for sets, expected in _inputs(tmp_path):
        output = tmp_path / "out"
        args = [sys.executable, "study/run.py", "--output", str(output), *sum((["--set", s] for s in sets), [])]
        result = subprocess.run(args + (["--dry-run"] if dry_run else []), cwd=ROOT, capture_output=True, text=True, timeout=60)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        ok = (result.returncode == 2 and len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr
              and not (output / "study_state.json").exists() and not (output / "tune").exists())
        if not ok:
            failures.append(f"{sets}: rc {result.returncode}, stderr {result.stderr[-600:]!r}")
    assert not failures, "\n".join(failures)


def test_check_trial_passes_every_shipped_preset_on_its_dataset():
    for sets in ([], ["model.preset=digits"], ["dataset=mnist5k"], ["dataset=synthetic", "eval.fid_features=inception-v3"],
                 ["dataset=synthetic", "model.preset=ddpmpp-cifar", "eval.fid=false"]):
        try:
            check_trial(load_trial_config(None, sets))
        except ConfigError as err:  # the Inception file is an optional install
            assert "Inception weights" in str(err) and "inception-v3" in sets[-1], err


def test_a_network_is_checked_at_the_datasets_resolution_without_allocating_it():
    config = load_trial_config(None, ["dataset=synthetic", "resolution=8", "model.preset=ddpmpp-cifar", "model.channel_mult=[2,2,2,2,2]",
                                      "eval.fid=false"])
    with pytest.raises(ConfigError, match=r"no U-Net .* at 8x8"):
        check_trial(config)


def test_a_corrupt_image_is_refused_naming_it_or_skipped_and_counted(tmp_path):
    folder = _folder(tmp_path / "images")
    broken = _broken(folder)
    with pytest.raises(DatasetError, match=f"{broken} cannot be read as an image.*set skip_unreadable: true"):
        load_image_folder(str(folder), None)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable file\(s\) of 13"):
        dataset = load_image_folder(str(folder), None, skip_unreadable=True)
    assert len(dataset.train) + len(dataset.test) == 12 and dataset.train.shape[1:] == (3, 16, 16)


def test_a_truncated_image_passes_the_header_check_and_fails_at_decode(tmp_path):
    folder = _folder(tmp_path / "images")
    whole = (folder / "img_03.png").read_bytes()
    (folder / "img_03.png").write_bytes(whole[: len(whole) // 2])
    assert dataset_shape("image_folder", str(folder)).resolution == 16  # the header is intact
    with pytest.raises(DatasetError, match="img_03.png cannot be read as an image"):
        load_image_folder(str(folder), None)


def test_mixed_sizes_or_modes_need_a_resolution(tmp_path):
    folder = _folder(tmp_path / "images")
    _folder(folder / "gray", count=1, mode="L")
    with pytest.raises(DatasetError, match="is 16x16 RGB, .*gray.img_00.png is 16x16 L; set `resolution`"):
        dataset_shape("image_folder", str(folder))
    _folder(folder / "wide", count=1, size=(20, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing to warn about
        dataset = load_image_folder(str(folder), 8)
    assert dataset.train.shape[1:] == (3, 8, 8) and len(dataset.train) + len(dataset.test) == 14


@pytest.mark.parametrize("sets, expected", [
    (["design.min_images=1500", "design.max_images=null"],
     "error: design.min_images 1500 leaves no larger size in the training pool of 1438 images of digits; set it below 1438"),
    (["design.min_images=1438", "design.max_images=null"],
     "error: design.min_images 1438 leaves no larger size in the training pool of 1438 images of digits; set it below 1438"),
    (["design.max_images=1500"], "error: design.max_images 1500 exceeds the training pool of 1438 images of digits; "
                                 "set it to at most 1438, or leave it unset for the whole pool"),
], ids=["min_above_pool", "min_at_pool", "max_above_pool"])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-start"])
def test_a_design_size_range_the_pool_cannot_hold_fails_in_one_line_before_ray_starts(tmp_path, sets, expected, dry_run):
    output = tmp_path / "out"
    args = [sys.executable, "study/run.py", "--output", str(output), *sum((["--set", s] for s in sets), [])]
    result = subprocess.run(args + (["--dry-run"] if dry_run else []), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [expected], result.stderr[-600:]
    assert not output.exists()


def test_a_design_may_start_one_image_below_the_pool():
    from study.config import load_study_config
    from study.phases.adaptive import size_range, size_range_problem

    config = load_study_config(None, ["design.min_images=1437", "design.max_images=null"])
    assert size_range(config) == (1437, 1438) and size_range_problem(config) is None


@pytest.mark.parametrize("side, declared", [(14000, "more than 178,956,970 pixels"), (10000, "10000x10000 pixels"),
                                            (8200, "8200x8200 pixels")], ids=["pil_error", "pil_warning", "over_the_limit"])
def test_a_decompression_bomb_is_refused_naming_it_or_skipped_and_counted(tmp_path, side, declared):
    """A PNG of one flat colour compresses to a few KB whatever its size (14000x14000: about 23 KB); decoded, it
    would take gigabytes. Past PIL's own limit it raises, past half of it warns, above 8192x8192 ours refuses it."""
    folder = _folder(tmp_path / "images")
    Image.new("1", (side, side)).save(folder / "bomb.png")
    assert (folder / "bomb.png").stat().st_size < 100_000
    refusal = (f"{folder / 'bomb.png'} cannot be read as an image ({declared}, over the 8192x8192 (67,108,864) pixels "
               "allowed for a dataset image); remove it, or set skip_unreadable: true to skip such files")
    for load in (lambda: dataset_shape("image_folder", str(folder)), lambda: load_image_folder(str(folder), 8)):
        with pytest.raises(DatasetError) as caught:
            load()
        assert str(caught.value) == refusal
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable file\(s\) of 13") as caught:
        dataset = load_image_folder(str(folder), None, skip_unreadable=True)
    assert len(dataset.train) + len(dataset.test) == 12
    assert not [w for w in caught if "DecompressionBomb" in w.category.__name__]


def test_a_decompression_bomb_fails_the_cli_in_one_line(tmp_path):
    folder = _folder(tmp_path / "images")
    Image.new("1", (14000, 14000)).save(folder / "bomb.png")
    args = [sys.executable, "study/run.py", "--dry-run", "--output", str(tmp_path / "out"), "--set", "trial.dataset=image_folder",
            "--set", f"trial.data_path={folder}"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    [line] = result.stderr.strip().splitlines()
    assert result.returncode == 2 and line.startswith(f"error: {folder / 'bomb.png'} cannot be read as an image (more than")
