"""`memorization`: how many of a folder's samples copy a training set, by the study's criterion (the trainer's
copy_test: nearest / second-nearest pixel-L2 distance under 1/3, as DiffMemorize's mem_ratio.py), per sample,
overall and per class of the nearest training image, with a figure of samples beside their nearest training images.

The training set is a model's own (its dataset and regime subset, from its config), a dataset with a regime as
the study draws it, or a folder. Distances are computed a block of samples at a time (trainables.metrics), so
50,000 samples against 50,000 training images fit in memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from study.after.sources import open_model

FIGURE_PAIRS = 32


def training_set(train: dict) -> tuple:
    """(uint8 images, labels or None, description) of the set audited against. `train`: {"model": source,
    "tracking_uri": ...}, {"dataset": name, "images": n, "fraction": f, "subset_seed": s, "data_path": p} or {"folder": path}."""
    from trainables.config import TrialConfig
    from trainables.config_io import validate
    from trainables.sample_files import read_images

    if train.get("folder"):
        images, _ = read_images(train["folder"])
        return images, None, f"the {len(images)} images of {train['folder']}"
    if train.get("model"):
        config = open_model(train["model"], uri=train.get("tracking_uri")).config
    else:
        config = validate(TrialConfig, {"dataset": train["dataset"], "data_path": train.get("data_path"),
                                        "regime_images": train.get("images"), "regime_fraction": train.get("fraction") or 1.0,
                                        "subset_seed": train.get("subset_seed") or 0})
    return _regime_of(config)


def _regime_of(config) -> tuple:
    from trainables.data import load_dataset
    from trainables.loop import trial_regime

    dataset = load_dataset(config.dataset, config.data_path, config.resolution, config.skip_unreadable)
    regime = trial_regime(config, dataset)
    labels = dataset.train_labels[regime] if dataset.train_labels is not None else None
    return dataset.train[regime], labels, f"{len(regime)} of {dataset.name}'s {len(dataset.train)} training images (subset seed {config.subset_seed})"


def audit(samples_path: Path, train: dict, ratio: float | None = None, limit: int | None = None) -> tuple[dict, dict]:
    """(report, pictures): the JSON-ready report, and what the figure needs (samples, partners, ratios, copied)."""
    from trainables.metrics import COPY_RATIO, copy_test
    from trainables.sample_files import read_images

    ratio = COPY_RATIO if ratio is None else ratio
    samples, names = read_images(samples_path, limit)
    images, labels, described = training_set(train)
    if len(images) < 2:
        raise ValueError(f"the training set ({described}) needs at least 2 images for a nearest/second-nearest ratio")
    if samples.shape[1:] != images.shape[1:]:
        raise ValueError(f"samples are {tuple(samples.shape[1:])}, the training images {tuple(images.shape[1:])}: they must match")
    started = time.perf_counter()
    found = copy_test(samples, images, ratio)
    report = {"memorization": float(found.copied.float().mean()), "copies": int(found.copied.sum()), "num_samples": len(samples),
              "ratio_threshold": ratio, "samples": str(samples_path), "training_set": described, "training_images": len(images),
              "seconds": time.perf_counter() - started}
    if labels is not None:
        report["memorization_class"] = _per_class(found.copied, labels[found.nearest])
    report["per_sample"] = [{"name": n, "ratio": float(r), "copy": bool(c), "nearest": int(i),
                             **({"class": int(labels[i])} if labels is not None else {})}
                            for n, r, c, i in zip(names, found.ratios, found.copied, found.nearest)]
    pictures = {"samples": samples, "partners": images[found.nearest], "ratios": found.ratios.tolist(), "copied": found.copied.tolist()}
    return report, pictures


def _per_class(copied, classes) -> dict[str, dict]:
    """Per class of the nearest training image: its samples and the fraction that copy."""
    out = {}
    for k in sorted(set(classes.tolist())):
        mine = classes == k
        out[str(k)] = {"memorization": float(copied[mine].float().mean()), "samples": int(mine.sum())}
    return out


def write_outputs(report: dict, pictures: dict, json_path: Path | None, figure_path: Path | None, pairs: int = FIGURE_PAIRS) -> None:
    from study.report.figures.copies import CopyPanel, copies_figure

    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1))
    if figure_path:
        shown = slice(0, pairs)
        title = (f"{report['samples']}: {report['copies']} of {report['num_samples']} samples copy "
                 f"({report['memorization']:.3f}); first {min(pairs, report['num_samples'])} shown")
        panel = CopyPanel(title, pictures["samples"][shown], pictures["partners"][shown], pictures["ratios"][shown], pictures["copied"][shown])
        copies_figure([panel], Path(figure_path), report["ratio_threshold"])
