"""Small CNNs that judge samples of the embedded datasets, and the script that trains them.

Four nets ship in `trainables/weights/` (state_dicts, < 1 MB each, sha256 in `manifest.json`):
- `digits-cnn`, `mnist-cnn`: digit classifiers whose 64-d penultimate activations are the FID
  feature spaces of `digits` and `mnist5k` (Inception-v3 knows nothing useful about 8x8 digits).
- `digits-orient`, `mnist-orient`: which of the 8 rotations/flips (the dihedral group D4) was
  applied to an image; the `leakage` metric counts samples they judge transformed.

Each is trained on its dataset's full training pool and scored on the held-out test split.
Retrain them all with `python -m trainables.feature_nets` (deterministic: the same torch gives
the same bytes; a few minutes on one CPU core). A net whose spec changes gets a new sha256, which
also invalidates the FID reference statistics cached for it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainables.catalog import DATASETS
from trainables.data import ImageDataset, load_dataset, to_signed

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST_PATH = WEIGHTS_DIR / "manifest.json"
FEATURE_DIM = 64
NUM_DIHEDRAL = 8
IDENTITY = 0
UPRIGHT_QUANTILE = 0.25  # see orientation_targets


class ClassifierCNN(nn.Module):
    """Conv3x3+ReLU+MaxPool stages down to 2x2, then a 64-d feature layer and a linear classifier.

    `widths` are the stages' channel counts, the last one repeated for further stages.
    Input: float images in [-1, 1] (`to_signed` of uint8), [N, C, resolution, resolution].
    """

    def __init__(self, resolution: int, num_classes: int, channels: int = 1, widths: tuple[int, ...] = (32, 64), feature_dim: int = FEATURE_DIM):
        super().__init__()
        num_stages = resolution.bit_length() - 2  # 8 -> 2 stages, 32 -> 4 stages: ends at 2x2
        if resolution != 2 ** (num_stages + 1) or num_stages < 1:
            raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
        stage_widths = [widths[min(i, len(widths) - 1)] for i in range(num_stages)]
        layers: list[nn.Module] = []
        in_channels = channels
        for width in stage_widths:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels = width
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(in_channels * 4, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)
        self.resolution = resolution

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [N, feature_dim]: the FID feature space."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def dihedral(images: torch.Tensor, index: int) -> torch.Tensor:
    """Element `index` (0..7) of D4 on the last two axes: rotate by 90*(index % 4) degrees, then
    mirror left-right when index >= 4. Index 0 is the identity."""
    out = torch.rot90(images, index % 4, dims=(-2, -1))
    return out.flip(-1) if index >= 4 else out


@dataclass(frozen=True)
class NetSpec:
    """What one shipped net is trained for, and how."""

    dataset: str
    task: str  # "digit": classify the digit; "orientation": classify the D4 element applied
    widths: tuple[int, ...]
    epochs: int
    batch_size: int = 128
    lr: float = 5e-3
    max_shift: int = 0  # random translation (pixels, background-filled) applied while training
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return 10 if self.task == "digit" else NUM_DIHEDRAL


NET_SPECS: dict[str, NetSpec] = {
    "digits-cnn": NetSpec("digits", "digit", widths=(32, 64), epochs=60),
    "mnist-cnn": NetSpec("mnist5k", "digit", widths=(16, 32, 64), epochs=30, max_shift=2),
    "digits-orient": NetSpec("digits", "orientation", widths=(32, 64), epochs=300),
    "mnist-orient": NetSpec("mnist5k", "orientation", widths=(8, 16, 32, 64), epochs=60),
}
ORIENTATION_NETS = {name: info.orientation_net for name, info in DATASETS.items() if info.orientation_net}


def build_net(name: str, resolution: int) -> ClassifierCNN:
    """The untrained architecture of shipped net `name` for images of `resolution`."""
    if name not in NET_SPECS:
        raise ValueError(f"unknown feature net {name!r}; choose one of {', '.join(NET_SPECS)}")
    spec = NET_SPECS[name]
    return ClassifierCNN(resolution, spec.num_classes, widths=spec.widths)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest() -> dict:
    if not MANIFEST_PATH.is_file():
        raise FileNotFoundError(f"{MANIFEST_PATH} is missing; run `python -m trainables.feature_nets` to train the shipped nets")
    return json.loads(MANIFEST_PATH.read_text())


def load_shipped_net(name: str, device: str | torch.device = "cpu") -> tuple[ClassifierCNN, str]:
    """A shipped net in eval mode and its weights' sha256, checked against the manifest."""
    entry = read_manifest().get(name)
    if entry is None:
        raise FileNotFoundError(f"{name} is not in {MANIFEST_PATH}; run `python -m trainables.feature_nets`")
    path = WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `python -m trainables.feature_nets`")
    sha = sha256_file(path)
    if sha != entry["sha256"]:
        raise ValueError(
            f"{path} has sha256 {sha}, the manifest says {entry['sha256']}; the file is corrupt or stale, "
            "retrain with `python -m trainables.feature_nets`"
        )
    net = build_net(name, entry["resolution"])
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.to(device).eval().requires_grad_(False), sha


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


@torch.no_grad()
def predict(net: nn.Module, images_uint8: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Class probabilities [N, classes] of uint8 images."""
    device = next(net.parameters()).device
    return torch.cat([net(to_signed(chunk.to(device))).softmax(dim=1).cpu() for chunk in images_uint8.split(batch_size)])


def judged_transformed(net: nn.Module, images_uint8: torch.Tensor) -> torch.Tensor:
    """Bool [N]: an orientation net finds the image more likely transformed than upright."""
    return predict(net, images_uint8)[:, IDENTITY] < 0.5


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
