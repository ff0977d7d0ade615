"""Where a trial runs: in this process (the `trainables.train` command) or as a Ray Train worker.

The worker loop talks only to a session: which rank it is, which device it has, where the last
checkpoint is, and how to report an eval point. That keeps one loop for both ways of running.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import ContextManager, Protocol

import torch

from trainables.checkpoint import CHECKPOINT_FILE, NEAREST_GRID, SAMPLE_GRID


def auto_device(preference: str) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class TrialSession(Protocol):
    """What the worker loop needs of where it runs."""

    rank: int
    world_size: int
    device: torch.device

    def resume_checkpoint(self) -> ContextManager[Path | None]:
        """The newest checkpoint's folder for the length of the block (None: start from scratch)."""

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        """The network on this worker's device, wrapped for DDP where there are several workers."""

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        """One eval point's metrics, with the checkpoint written for it (the session takes the folder over)."""

    def truncate_metrics(self, kimg: float) -> None:
        """Forget reports past `kimg` (a resumed run repeats them)."""

    def scratch_dir(self) -> Path:
        """An empty folder to write the next checkpoint into."""


class LocalSession:
    """One process, no Ray: metrics to DIR/metrics.jsonl, checkpoints to DIR/checkpoints/kimg-XXXXXXX/, pictures to DIR/samples/."""

    rank = 0
    world_size = 1

    def __init__(self, output: Path, device: str = "auto", keep: int = 2):
        self.output = Path(output)
        self.device = auto_device(device)
        self.keep = keep
        (self.output / "checkpoints").mkdir(parents=True, exist_ok=True)

    def latest_checkpoint(self) -> Path | None:
        found = sorted(p for p in (self.output / "checkpoints").glob("kimg-*") if (p / CHECKPOINT_FILE).is_file())
        return found[-1] if found else None

    @contextlib.contextmanager
    def resume_checkpoint(self) -> Iterator[Path | None]:
        yield self.latest_checkpoint()

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        return net.to(self.device)

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None:
            name = f"kimg-{int(round(metrics['kimg'] * 1000)):09d}"
            for picture, suffix in ((SAMPLE_GRID, ""), (NEAREST_GRID, "-nearest")):  # kept past checkpoint rotation
                if (checkpoint_dir / picture).exists():
                    (self.output / "samples").mkdir(exist_ok=True)
                    shutil.copy(checkpoint_dir / picture, self.output / "samples" / f"{name}{suffix}.png")
            target = self.output / "checkpoints" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(checkpoint_dir), target)
            for old in sorted((self.output / "checkpoints").glob("kimg-*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        with open(self.output / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(metrics) + "\n")

    def truncate_metrics(self, kimg: float) -> None:
        """Drop metric lines past the resumed checkpoint, so the kimg axis has no duplicates."""
        path = self.output / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["kimg"] <= kimg + 1e-9]
        path.write_text("".join(line + "\n" for line in kept))

    def scratch_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="ckpt-", dir=self.output / "checkpoints"))


class RayTrainSession:
    """A Ray Train worker: DDP through ray.train.torch, checkpoints through ray.train.report."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._checkpoint = ray.train.get_checkpoint()

    def _report(self, metrics: dict, checkpoint) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=checkpoint)

    @contextlib.contextmanager
    def resume_checkpoint(self) -> Iterator[Path | None]:
        """Ray's checkpoint as a local folder (downloaded from remote storage if need be), removed after the block."""
        if self._checkpoint is None:
            yield None
            return
        with self._checkpoint.as_directory() as folder:
            yield Path(folder)

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(net)

    def report(self, metrics: dict, checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self._report(metrics, checkpoint)
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)

    def truncate_metrics(self, kimg: float) -> None:
        """Ray Tune keeps the reported history; the driver de-duplicates by kimg."""

    def scratch_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="scoreaug-ckpt-"))


class TuneTrialSession(RayTrainSession):
    """The one worker of Ray Train's local mode, inside a Tune trial: Ray Train's APIs are off limits there
    (and local mode keeps reports to itself), so reports and checkpoints go through the Tune trial, which
    persists them and resumes from them. Ray gives the trial process its GPU, if any, as cuda:0."""

    rank = 0
    world_size = 1

    def __init__(self):
        import ray.tune

        self.device = auto_device("auto")
        self._checkpoint = ray.tune.get_checkpoint()

    def _report(self, metrics: dict, checkpoint) -> None:
        import ray.tune

        ray.tune.report(metrics, checkpoint=checkpoint)

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        return net.to(self.device)
