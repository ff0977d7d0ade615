"""`fid`: FID of a folder or .npz of images against a dataset's reference statistics (the trial's own
FidEvaluator: the same feature network, the same cached reference, so the same samples give the trial's `fid`)
or against another folder.

Every answer names its feature network, its sample count and its protocol. "full" is EDM's: 50,000 generated
images against the whole training split; it is never said of fewer images, and `--full` refuses them.
"""

from __future__ import annotations

from pathlib import Path

FULL_SAMPLES = 50_000


class ProtocolError(ValueError):
    """Fewer images than the protocol asked for."""


def protocol(num_samples: int, reference: str) -> str:
    """'full' for 50,000 images against a training split, else what it is: 'N=<count> vs <reference>'."""
    if num_samples == FULL_SAMPLES and reference.endswith(" train"):
        return "full"
    return f"N={num_samples} vs {reference}"


def fid(images: Path, ref: str, features: str | None = None, num: int | None = None, full: bool = False,
        options: dict | None = None) -> dict:
    """FID of the first `num` images (all by default) of `images` against `ref`: "<dataset>[:train|test]" or a folder.
    options: data_path, cache_dir, weights_path, device."""
    from trainables.sample_files import read_images

    options = options or {}
    if full and num not in (None, FULL_SAMPLES):
        raise ProtocolError(f"--full is {FULL_SAMPLES} images; drop --num {num} or --full")
    samples, _ = read_images(images, FULL_SAMPLES if full else num)
    if full and len(samples) < FULL_SAMPLES:
        raise ProtocolError(f"{images} holds {len(samples)} images; the full protocol is {FULL_SAMPLES} "
                            f"(generate them with --seeds 0-{FULL_SAMPLES - 1}), or drop --full")
    if num is not None and len(samples) < num:
        raise ProtocolError(f"{images} holds {len(samples)} images, not the {num} asked for")
    if Path(ref).is_dir() or ref.endswith(".npz"):
        result = _against_folder(samples, Path(ref), features, options)
    else:
        result = _against_dataset(samples, ref, features, options)
    if full and result["protocol"] != "full":
        raise ProtocolError(f"the full protocol is measured against a dataset's training split, not {result['reference']}")
    return result


def _against_dataset(samples, ref: str, features: str | None, options: dict) -> dict:
    """Through the trial's FidEvaluator: `fid` against the train split, `fid_test` against the test split."""
    from trainables.data import load_dataset
    from trainables.fid import FidEvaluator, default_feature_space

    name, _, split = ref.partition(":")
    if split not in ("", "train", "test"):
        raise ValueError(f"--ref {ref}: the split is train or test, not {split!r}")
    dataset = load_dataset(name, options.get("data_path"))
    space = features or default_feature_space(dataset.name)
    evaluator = FidEvaluator(dataset, space, len(samples), options.get("cache_dir"), options.get("weights_path"), options.get("device", "cpu"))
    measured = evaluator.evaluate(samples)
    split = split or "train"
    reference = f"{dataset.name} {split}"
    return {"fid": measured["fid" if split == "train" else "fid_test"], "fid_train": measured["fid"], "fid_test": measured["fid_test"],
            "fid_floor": evaluator.floor(), "floor_num_samples": evaluator.floor_num_samples, "feature_network": space,
            "num_samples": len(samples), "reference": reference, "reference_images": len(dataset.train if split == "train" else dataset.test),
            "protocol": protocol(len(samples), reference)}


def _against_folder(samples, ref: Path, features: str | None, options: dict) -> dict:
    from trainables.fid import feature_statistics, frechet_distance, get_feature_space
    from trainables.sample_files import read_images

    if not features:
        raise ValueError("--ref is a folder: name the feature network with --features (digits-cnn, mnist-cnn, inception-v3)")
    reference, _ = read_images(ref)
    space = get_feature_space(features, options.get("weights_path"), options.get("device", "cpu"))
    mine, theirs = (feature_statistics(space.features(images)) for images in (samples, reference))
    return {"fid": frechet_distance(*mine, *theirs), "feature_network": features, "num_samples": len(samples),
            "reference": str(ref), "reference_images": len(reference), "protocol": protocol(len(samples), str(ref))}
