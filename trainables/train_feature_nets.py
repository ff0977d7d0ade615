"""`python -m trainables.train_feature_nets`: train the shipped feature and orientation nets, write the manifest.

Deterministic (the same torch gives the same bytes), a few minutes on one CPU core; see feature_nets.py.
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from trainables.data import ImageDataset, load_dataset, to_signed
from trainables.feature_nets import (FEATURE_DIM, IDENTITY, MANIFEST_PATH, NET_SPECS, NUM_DIHEDRAL, WEIGHTS_DIR, ClassifierCNN,
                                     build_net, dihedral, judged_transformed, predict, sha256_file)

UPRIGHT_QUANTILE = 0.25  # see orientation_targets


def _nearest_distance(queries: torch.Tensor, reference: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
    """Euclidean distance (uint8 pixel units) from each query to its nearest reference image."""
    flat_ref = reference.flatten(1).float()
    out = []
    for start in range(0, len(queries), 1024):
        dist = torch.cdist(queries[start : start + 1024].flatten(1).float(), flat_ref)
        if exclude_self:
            rows = torch.arange(dist.shape[0])
            dist[rows, rows + start] = float("inf")
        out.append(dist.min(dim=1).values)
    return torch.cat(out)


def orientation_targets(images: torch.Tensor) -> torch.Tensor:
    """The class [N, 8] that D4 element k applied to each uint8 image should be judged as.

    Normally k itself. Some digits look upright after a transform (a 0 or 8 rotated by 180
    degrees, a 1 mirrored, a 6 rotated into a 9): such an image is no visible leak, so its target
    is the identity. A transformed image counts as upright when its nearest upright image (pixel
    distance) is closer than the lower quartile of real images' nearest-neighbour distances. That
    is about 2% of transformed images, nearly all from the half turn and the left-right and
    up-down mirrors (0s, 1s and 8s).
    """
    typical = _nearest_distance(images, images, exclude_self=True).quantile(UPRIGHT_QUANTILE)
    targets = torch.full((len(images), NUM_DIHEDRAL), IDENTITY)
    for index in range(1, NUM_DIHEDRAL):
        looks_upright = _nearest_distance(dihedral(images, index), images) <= typical
        targets[:, index] = torch.where(looks_upright, IDENTITY, index)
    return targets


def _random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels per axis, filling with background (-1)."""
    if max_shift == 0:
        return images
    n, c, h, w = images.shape
    padded = F.pad(images, [max_shift] * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w + 2 * max_shift)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def _random_dihedral(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image under a random D4 element: the identity with probability 1/2, else one of the 7
    others uniformly, so 'transformed or not' is balanced. Returns the images and the elements."""
    n = len(images)
    transformed = torch.rand(n, generator=generator) < 0.5
    index = torch.where(transformed, torch.randint(1, NUM_DIHEDRAL, (n,), generator=generator), IDENTITY)
    every = torch.stack([dihedral(images, k) for k in range(NUM_DIHEDRAL)])
    return every[index, torch.arange(n)], index


def _heldout_scores(name: str, net: ClassifierCNN, dataset: ImageDataset) -> dict:
    spec = NET_SPECS[name]
    if spec.task == "digit":
        return {"heldout_accuracy": (predict(net, dataset.test).argmax(dim=1) == dataset.test_labels).float().mean().item()}
    moved = torch.cat([dihedral(dataset.test, k) for k in range(1, NUM_DIHEDRAL)])
    applied = torch.arange(1, NUM_DIHEDRAL).repeat_interleave(len(dataset.test))
    everything = torch.cat([dataset.test, moved])
    truth = torch.cat([torch.full((len(dataset.test),), IDENTITY), applied])
    return {
        "heldout_accuracy": (predict(net, everything).argmax(dim=1) == truth).float().mean().item(),
        "leakage_upright": judged_transformed(net, dataset.test).float().mean().item(),
        "leakage_transformed": judged_transformed(net, moved).float().mean().item(),
    }


def train_net(name: str, dataset: ImageDataset) -> tuple[ClassifierCNN, dict]:
    """Train shipped net `name` on `dataset`'s training pool; returns the net and its manifest entry.

    Held-out accuracy is on the test split; for orientation nets it is the 8-way accuracy over all
    8 transforms of every test image (judged against the transform applied, so the ambiguous
    cases of `orientation_targets` count as errors), with `leakage` on upright and on transformed
    test images beside it.
    """
    spec = NET_SPECS[name]
    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    images = to_signed(dataset.train)
    labels = dataset.train_labels if spec.task == "digit" else orientation_targets(dataset.train)
    net = build_net(name, dataset.resolution)
    optimizer = torch.optim.Adam(net.parameters(), lr=spec.lr)
    steps = spec.epochs * -(-len(images) // spec.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=steps)
    start = time.perf_counter()
    net.train()
    for _ in range(spec.epochs):
        for batch in torch.randperm(len(images), generator=generator).split(spec.batch_size):
            x, target = _random_shift(images[batch], spec.max_shift, generator), labels[batch]
            if spec.task == "orientation":
                x, index = _random_dihedral(x, generator)
                target = target[torch.arange(len(batch)), index]
            loss = F.cross_entropy(net(x), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    entry = {
        "file": f"{name}.pt",
        "dataset": spec.dataset,
        "task": spec.task,
        "resolution": dataset.resolution,
        "feature_dim": FEATURE_DIM,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(time.perf_counter() - start, 1),
        **{key: round(value, 4) for key, value in _heldout_scores(name, net, dataset).items()},
    }
    return net, entry


def main() -> None:
    # One thread: these nets are too small to gain from a second, and where another process
    # holds a core, two threads wait on each other (a training step measured 40x slower).
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    WEIGHTS_DIR.mkdir(exist_ok=True)
    manifest = {}
    datasets = {name: load_dataset(name) for name in {spec.dataset for spec in NET_SPECS.values()}}
    for name, spec in NET_SPECS.items():
        net, entry = train_net(name, datasets[spec.dataset])
        path = WEIGHTS_DIR / entry["file"]
        torch.save(net.state_dict(), path)
        entry["sha256"] = sha256_file(path)
        manifest[name] = entry
        extra = "".join(f"  {key} {entry[key]:.4f}" for key in ("leakage_upright", "leakage_transformed") if key in entry)
        print(f"{name:14s} held-out accuracy {entry['heldout_accuracy']:.4f}{extra}  {entry['parameters']:,} params  {entry['train_seconds']:.1f} s")
    MANIFEST_PATH.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {MANIFEST_PATH}")


if __name__ == "__main__":
    main()
