"""bench/gpu_check.sh --cpu: the GPU check's dry run (every step that needs no CUDA, on CPU at tiny sizes), so the
first run on a GPU machine finds the script, the benchmark, the trainer and the study path working."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_passes_on_cpu(tmp_path):
    work = tempfile.mkdtemp(prefix="gc")  # short: Ray's socket paths under it must stay within 107 bytes
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_TMPDIR")}
    env.update(PYTHON=sys.executable, TMPDIR=work)
    try:
        result = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu", "--out", str(tmp_path)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600, check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    report = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    steps = ["install", "cuda_tests", "throughput", "train", "install_study", "ray_trial"]  # what needs Ray, last
    assert report["passed"] and list(report["steps"]) == steps
    assert sorted(p.name for p in (tmp_path / "gpu_check_cpu_logs").iterdir()) == sorted(f"{s}.log" for s in steps)
    rows = report["throughput"]["results"][0]["rows"]
    assert [row["precision"] for row in rows] == ["fp32", "bf16"]
    assert all(row["img_s"] > 0 and row["flops_per_image"] > 0 for row in rows)
    curve = report["train_curve"]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]
