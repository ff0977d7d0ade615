"""Wheels for an air-gapped GPU node, and their install there: bench/gpu_check.sh --bundle and --wheels call this.

Compute nodes often carry a CUDA torch and the scientific stack but not Ray, Optuna, MLflow or pydantic, cannot
reach an index, and take files only up to a size. So `build` downloads, where there is network, every wheel the
project needs except torch and the nvidia-* libraries (the node's own), for the node's Python and glibc, and splits
any wheel over 60 MiB into parts listed with its sha256 in bundle.json. `install` joins and verifies them on the
node and runs pip with no index and no other source, torch pinned to the version already there and checked after.

    python bench/gpu_bundle.py build DIR [--python 3.12] [--glibc 2.28]    # where there is network
    python bench/gpu_bundle.py install [--wheels DIR --work W] -- PIP_ARGS  # on the node (no --wheels: from PyPI)
Standard library only: it runs on the node's Python before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PART_BYTES = 60 * 2**20  # the largest file a bundle holds
MANIFEST = "bundle.json"
NOT_BUNDLED = ("torch", "nvidia-", "triton")  # the node's CUDA torch and the libraries that come with it
MiB = 2**20


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(MiB), b""):
            sha.update(block)
    return sha.hexdigest()


def dist_name(filename: str) -> str:
    return filename.split("-")[0].lower().replace("_", "-")


def project_wheel(out: Path) -> Path:
    """The project as a wheel, built from a copy of its packages so the checkout gets no build/ or egg-info."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src / name)
        for package in (p for p in ROOT.iterdir() if (p / "__init__.py").exists()):
            shutil.copytree(package, src / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)], check=True)
    return next(out.glob("scoreaug_study-*.whl"))


def project_requirements(wheel: Path) -> list[str]:
    """Requires-Dist of the built wheel with its test extra, less torch: the one list, read from pyproject's build."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        requires = Parser().parsestr(archive.read(meta).decode()).get_all("Requires-Dist") or []
    keep = []
    for line in requires:
        spec, _, marker = line.partition(";")
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip()).group().lower()
        if (not marker.strip() or re.search(r"extra\s*==\s*['\"]test['\"]", marker)) and name != "torch":
            keep.append(spec.strip())
    return keep


def downloader(python: str) -> str:
    """pip evaluates environment markers for the Python it runs on: use the target's own Python when there is one."""
    if python == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return sys.executable
    other = shutil.which(f"python{python}")
    if other and subprocess.run([other, "-m", "pip", "--version"], capture_output=True, check=False).returncode == 0:
        return other
    print(f"warning: no python{python} with pip here; markers are evaluated for {sys.version.split()[0]}")
    return sys.executable


def download(out: Path, requirements: list[str], python: str, glibc: str) -> None:
    minor = int(glibc.split(".")[1])
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(minor, 16, -1)] + ["manylinux2014_x86_64"]
    subprocess.run([downloader(python), "-m", "pip", "download", "-q", "-d", str(out), "--only-binary=:all:",
                    "--python-version", python, "--implementation", "cp",
                    *(f"--platform={p}" for p in platforms), *requirements], check=True)
    strays = sorted(p.name for p in out.iterdir() if dist_name(p.name).startswith(NOT_BUNDLED))
    if strays:
        raise SystemExit(f"the bundle must not carry the node's torch stack, but pip fetched {strays}")


def split(path: Path) -> dict:
    """One wheel as manifest entry; over PART_BYTES it becomes NAME.part00, .part01, ... and the wheel goes."""
    entry = {"name": path.name, "sha256": digest(path), "bytes": path.stat().st_size}
    if entry["bytes"] <= PART_BYTES:
        entry["parts"] = [{"file": path.name, "bytes": entry["bytes"]}]
        return entry
    entry["parts"] = []
    with open(path, "rb") as stream:
        for index, block in enumerate(iter(lambda: stream.read(PART_BYTES), b"")):
            part = path.with_name(f"{path.name}.part{index:02d}")
            part.write_bytes(block)
            entry["parts"].append({"file": part.name, "bytes": len(block)})
    path.unlink()
    return entry


def build(out: Path, python: str, glibc: str) -> None:
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: a bundle goes into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    wheel = project_wheel(out)
    download(out, project_requirements(wheel), python, glibc)
    files = [split(path) for path in sorted(out.glob("*.whl"))]
    manifest = {"python": python, "glibc": glibc, "project": wheel.name, "part_bytes": PART_BYTES, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    parts = [part for entry in files for part in entry["parts"]]
    for part in parts:
        print(f"{part['bytes'] / MiB:8.2f} MiB  {part['file']}")
    largest = max(parts, key=lambda part: part["bytes"])
    print(f"{out}: {len(files)} wheels in {len(parts)} files + {MANIFEST}, "
          f"{sum(p['bytes'] for p in parts) / MiB:.1f} MiB in all, largest {largest['bytes'] / MiB:.1f} MiB")


def join(bundle: Path, work: Path) -> list[str]:
    """Every wheel of the bundle whole in work (a link, or its parts joined) and verified; what failed, in words."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if manifest["python"] != here:
        print(f"warning: the bundle is for Python {manifest['python']}, this is {here}")
    work.mkdir(parents=True, exist_ok=True)
    problems = []
    for entry in manifest["files"]:
        parts, target = [bundle / part["file"] for part in entry["parts"]], work / entry["name"]
        target.unlink(missing_ok=True)
        if not all(part.exists() for part in parts):
            problems.append(f"{entry['name']}: missing {[p.name for p in parts if not p.exists()]}")
            continue
        if len(parts) == 1:
            target.symlink_to(parts[0].resolve())
        else:
            with open(target, "wb") as stream:
                stream.writelines(part.read_bytes() for part in parts)
        if digest(target) != entry["sha256"]:
            target.unlink()
            problems.append(f"{entry['name']}: sha256 differs from {MANIFEST} (a part damaged in transfer?)")
    return problems


def torch_version() -> str | None:
    probe = "import importlib.metadata as m\ntry: print(m.version('torch'))\nexcept m.PackageNotFoundError: pass"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=False).stdout.strip() or None


def install(wheels: Path | None, work: Path | None, pip_args: list[str]) -> int:
    """pip install PIP_ARGS with torch pinned to the installed one; with wheels, from them alone (no index, no pip
    configuration: its find-links or extra index could otherwise serve a wheel)."""
    before, env, source = torch_version(), dict(os.environ), []
    if wheels:
        work = work or Path(tempfile.mkdtemp(prefix="wheels"))
        for problem in join(wheels, work):
            print(f"bundle: {problem}")
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
        source = ["--no-index", "--find-links", str(work)]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pins:
        pins.write(f"torch=={before}\n" if before else "")
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *source, "-c", pins.name]
    rc = subprocess.run([*command, *pip_args], env=env, check=False).returncode
    os.unlink(pins.name)
    after = torch_version()
    print(f"torch {before} before, {after} after")
    return rc or (1 if before and after != before else 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="download the bundle into a new folder")
    make.add_argument("out", type=Path)
    make.add_argument("--python", default="3.12", help="the node's Python, X.Y")
    make.add_argument("--glibc", default="2.28", help="the node's glibc, 2.N (manylinux_2_N and older wheels)")
    put = commands.add_parser("install", help="pip install, torch kept; with --wheels from the bundle only")
    put.add_argument("--wheels", type=Path, help="a bundle folder")
    put.add_argument("--work", type=Path, help="where the wheels are joined (default: a new temporary folder)")
    put.add_argument("pip_args", nargs="+")
    args = parser.parse_args()
    if args.command == "build":
        build(args.out, args.python, args.glibc)
        return 0
    return install(args.wheels, args.work, args.pip_args)


if __name__ == "__main__":
    sys.exit(main())
