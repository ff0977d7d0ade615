"""bench/gpu_check.sh's air-gapped path for real, on this machine, as a user without network on the node runs it.

  1. `bash bench/gpu_check.sh --bundle DIR --python 3.11` (this machine's Python; the default glibc 2.28 wheels);
     every file in DIR must be at most 60 MiB;
  2. a fresh venv holding only CPU torch (`pip install torch==2.13.0`, the CPU build here), as a node holds its own;
  3. `bash bench/gpu_check.sh --cpu --wheels DIR` in that venv with PIP_NO_INDEX=1: it must pass, torch's version
     must be what it was, and every distribution the check added must be one of the bundle's.
Not a pytest test: it downloads the bundle (about 280 MiB) from PyPI, cached by pip after the first time.
Run from the repository root with the project's Python: `python tests/cluster_launch/gpu_bundle_check.py`.
Prints a table and writes bench/results/gpu_bundle_check.json; exits 1 on the first check that fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PART_LIMIT = 60 * 2**20
MiB = 2**20
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


def check(ok: bool, what: str) -> None:
    print(f"{'ok' if ok else 'FAILED'}: {what}")
    if not ok:
        raise SystemExit(1)


def distributions(python: Path) -> dict[str, str]:
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                            check=True).stdout
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(listed)}


def build_bundle(bundle: Path) -> dict:
    subprocess.run(["bash", "bench/gpu_check.sh", "--bundle", str(bundle), "--python", PYTHON], cwd=ROOT, check=True)
    sizes = {path.name: path.stat().st_size for path in bundle.iterdir()}
    largest = max(sizes, key=sizes.get)
    check(sizes[largest] <= PART_LIMIT, f"every file of the bundle at most 60 MiB (largest: {largest})")
    manifest = json.loads((bundle / "bundle.json").read_text())
    return {"files": len(sizes), "wheels": len(manifest["files"]), "total_mib": round(sum(sizes.values()) / MiB, 1),
            "largest": largest, "largest_mib": round(sizes[largest] / MiB, 2),
            "split": [e["name"] for e in manifest["files"] if len(e["parts"]) > 1],
            "names": {e["name"].split("-")[0].lower().replace("_", "-") for e in manifest["files"]}}


def node_venv(path: Path) -> Path:
    """What a node has: a Python with its own torch (here CPU torch 2.13.0, never one pip picks) and nothing else."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    return python


def dry_run(python: Path, bundle: Path, out: Path, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR", "VIRTUAL_ENV")}
    env.update(PYTHON=str(python), PIP_NO_INDEX="1", TMPDIR=str(tmp))
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu", "--wheels", str(bundle), "--out", str(out)],
                            cwd=ROOT, env=env, check=False)
    report = json.loads((out / "gpu_check_cpu.json").read_text())
    check(result.returncode == 0 and report["passed"], "gpu_check.sh --cpu --wheels passed")
    return report


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="gb"))  # short: Ray's socket paths under it must stay within 107 bytes
    timings, start = {}, time.monotonic()
    try:
        bundle = build_bundle(tmp / "bundle")
        timings["bundle"] = time.monotonic() - start
        python = node_venv(tmp / "node")
        before = distributions(python)
        timings["node_venv"] = time.monotonic() - start - sum(timings.values())
        report = dry_run(python, tmp / "bundle", tmp / "out", tmp)
        timings["dry_run"] = time.monotonic() - start - sum(timings.values())
        after = distributions(python)
        check(after["torch"] == before["torch"], f"torch {before['torch']} unchanged")
        foreign = sorted(set(after) - set(before) - bundle["names"])
        check(not foreign, f"every distribution added is the bundle's (others: {foreign})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = dict(python=PYTHON, torch=before["torch"], seconds={k: round(v, 1) for k, v in timings.items()},
                   install_seconds={s: report["steps"][s]["seconds"] for s in ("install", "install_study")},
                   **{k: v for k, v in bundle.items() if k != "names"})
    print(f"{'phase':<12} {'seconds':>8}")
    for phase, seconds in summary["seconds"].items():
        print(f"{phase:<12} {seconds:>8}")
    print(f"bundle: {summary['files']} files ({summary['wheels']} wheels, split: {summary['split']}), "
          f"{summary['total_mib']} MiB, largest {summary['largest']} {summary['largest_mib']} MiB; "
          f"installs {summary['install_seconds']} s; {sum(timings.values()):.0f} s in all")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "gpu_bundle_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
