"""Named transform sets a search can pick from."""

TRANSFORM_SETS: dict[str, list[str]] = {
    "flips": ["hflip", "vflip"],
    "rot90": ["rot90"],
    "translation": ["translate"],
    "geometric": ["hflip", "vflip", "rot90", "translate"],
    "color": ["brightness"],
    "cutout": ["cutout"],
    "all": ["hflip", "vflip", "rot90", "translate", "brightness", "cutout"],
}
