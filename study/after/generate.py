"""`generate`: images of a trained model at chosen seeds, as EDM's generate.py writes them (one PNG per seed,
optionally in subfolders of 1,000, or one .npz), resumable: seeds already written are skipped.

Seeds 0..N-1 at the trial's own sampler steps and batch give exactly the first N samples the trial measured at
that checkpoint (its eval.seed 0): trainables.generation is the path both take.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from study.after.sources import open_model


@dataclass
class Generated:
    outdir: Path
    written: int  # images made by this run
    skipped: int  # seeds found already written (a resumed run)
    seconds: float
    model: object  # the trainables.model_file.TrialModel sampled


def generate(source: str, outdir: Path, seeds: list[int], steps: int | None = None, subdirs: bool = False,
             options: dict | None = None) -> Generated:
    """Write the model's image for every seed not yet in `outdir`. options: weights ("ema"/"raw"), batch,
    device, threads (default: the trial's runtime.threads), tracking_uri, progress (bool)."""
    from trainables import sample_files
    from trainables.generation import SAMPLE_BATCH, sample_batches, torch_threads
    from trainables.session import auto_device

    options = options or {}
    device = auto_device(options.get("device", "auto"))
    model = open_model(source, options.get("weights", "ema"), device, options.get("tracking_uri"))
    todo = sample_files.missing_seeds(outdir, seeds, subdirs)
    started = time.perf_counter()
    batches = sample_batches(model.net, todo, model.shape, steps or model.config.eval.sampler_steps,
                             model.config.diffusion, device, options.get("batch") or SAMPLE_BATCH)
    threads = options.get("threads") or model.config.runtime.threads
    with torch_threads(threads), _progress(len(seeds), len(seeds) - len(todo), options.get("progress", True)) as bar:
        for part, images in batches:
            sample_files.write_batch(outdir, part, images, subdirs)
            bar.update(len(part))
    sample_files.finish(outdir, seeds)
    return Generated(Path(outdir), len(todo), len(seeds) - len(todo), time.perf_counter() - started, model)


def _progress(total: int, done: int, shown: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="img", disable=not shown, dynamic_ncols=True, desc="generate")
