"""Named transform sets a search can pick from."""

from trainables.config import ALL_TRANSFORMS

TRANSFORM_SETS: dict[str, list[str]] = {
    "flips": ["hflip", "vflip"],
    "rot90": ["rot90"],
    "translation": ["translate"],
    "geometric": ["hflip", "vflip", "rot90", "translate"],
    "color": ["brightness"],
    "cutout": ["cutout"],
    "all": list(ALL_TRANSFORMS),
}
