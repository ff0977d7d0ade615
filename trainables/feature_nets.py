"""Small CNNs that judge samples of the embedded datasets (trainables/train_feature_nets.py trains them).

Four nets ship in `trainables/weights/` (state_dicts, < 1 MB each, sha256 in `manifest.json`):
- `digits-cnn`, `mnist-cnn`: digit classifiers whose 64-d penultimate activations are the FID
  feature spaces of `digits` and `mnist5k` (Inception-v3 knows nothing useful about 8x8 digits).
- `digits-orient`, `mnist-orient`: which of the 8 rotations/flips (the dihedral group D4) was
  applied to an image; the `leakage` metric counts samples they judge transformed.

Each is trained on its dataset's full training pool and scored on the held-out test split.
Retrain them all with `python -m trainables.train_feature_nets` (deterministic: the same torch gives
the same bytes; a few minutes on one CPU core). A net whose spec changes gets a new sha256, which
also invalidates the FID reference statistics cached for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainables.catalog import DATASETS
from trainables.data import to_signed

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST_PATH = WEIGHTS_DIR / "manifest.json"
FEATURE_DIM = 64
NUM_DIHEDRAL = 8
IDENTITY = 0


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
        raise FileNotFoundError(f"{MANIFEST_PATH} is missing; run `python -m trainables.train_feature_nets` to train the shipped nets")
    return json.loads(MANIFEST_PATH.read_text())


def load_shipped_net(name: str, device: str | torch.device = "cpu") -> tuple[ClassifierCNN, str]:
    """A shipped net in eval mode and its weights' sha256, checked against the manifest."""
    entry = read_manifest().get(name)
    if entry is None:
        raise FileNotFoundError(f"{name} is not in {MANIFEST_PATH}; run `python -m trainables.train_feature_nets`")
    path = WEIGHTS_DIR / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `python -m trainables.train_feature_nets`")
    sha = sha256_file(path)
    if sha != entry["sha256"]:
        raise ValueError(
            f"{path} has sha256 {sha}, the manifest says {entry['sha256']}; the file is corrupt or stale, "
            "retrain with `python -m trainables.train_feature_nets`"
        )
    net = build_net(name, entry["resolution"])
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.to(device).eval().requires_grad_(False), sha


@torch.no_grad()
def predict(net: nn.Module, images_uint8: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Class probabilities [N, classes] of uint8 images."""
    device = next(net.parameters()).device
    return torch.cat([net(to_signed(chunk.to(device))).softmax(dim=1).cpu() for chunk in images_uint8.split(batch_size)])


def judged_transformed(net: nn.Module, images_uint8: torch.Tensor) -> torch.Tensor:
    """Bool [N]: an orientation net finds the image more likely transformed than upright."""
    return predict(net, images_uint8)[:, IDENTITY] < 0.5
