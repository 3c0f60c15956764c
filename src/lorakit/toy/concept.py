"""The concept the base model has never seen: a ring (an annulus), called by the trigger "zqx".

The base is trained on SHAPES only; a ring is a circle with a hole, which its UNet and text
encoder never met, and "zqx" is a word its captions never used. The scorer tells a ring from
every base shape, so a LoRA's concept fidelity is a measured rate.

The training set is shipped in the package (assets/concept: 8 PNGs of 32x32 and their .txt
captions, a few kB) so `lorakit train --data` can point at it; `write_dataset` draws the same
files again, deterministically, anywhere.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_path, write_text_atomic
from . import world

TRIGGER = world.TRIGGER
SHAPE = world.CONCEPT_SHAPE
DATASET_DIR = Path(__file__).parent / "assets" / "concept"

# every colour twice, every background at least twice, sizes and places spread out
_SCENES = (
    ("red", "white", 0.62, 0.45, 0.52),
    ("green", "black", 0.55, 0.55, 0.45),
    ("blue", "gray", 0.66, 0.50, 0.50),
    ("yellow", "black", 0.52, 0.42, 0.58),
    ("red", "gray", 0.58, 0.57, 0.43),
    ("green", "white", 0.64, 0.48, 0.55),
    ("blue", "white", 0.50, 0.60, 0.60),
    ("yellow", "gray", 0.60, 0.52, 0.47),
)


def scenes() -> list[world.Scene]:
    """The concept's training scenes (fixed, so the dataset never changes between versions)."""
    return [world.Scene(SHAPE, c, b, s, x, y) for c, b, s, x, y in _SCENES]


def write_dataset(folder: Path, size: int = world.IMAGE_SIZE) -> Path:
    """Draw the concept dataset into `folder`: NN_<colour>_<background>.png + .txt caption."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes()):
        stem = folder / f"{i:02d}_{scene.color}_{scene.background}"
        with atomic_path(stem.with_suffix(".png")) as tmp:
            world.render(scene, size).save(tmp, format="PNG", optimize=True)
        write_text_atomic(stem.with_suffix(".txt"), world.caption(scene) + "\n")
    return folder


def dataset_path() -> Path:
    """The shipped concept dataset folder (images + captions)."""
    from ..errors import LoraKitError

    if not any(DATASET_DIR.glob("*.png")):
        raise LoraKitError("the toy concept dataset is missing; reinstall lorakit", DATASET_DIR)
    return DATASET_DIR
