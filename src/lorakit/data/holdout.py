"""Images held out of training for validation: a share of the instance images, or a folder of their own.

The split is a pure function of the seed and the image paths (as sd-scripts' `split_train_val`
shuffles with the validation seed and cuts), so a resumed run, or the same command run again,
holds out the same images. Regularisation images are never held out: they are not the subject.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..errors import LoraKitError
from .dataset import mix_seed
from .folders import ImageItem, Subset, scan, subsets_in


def split(items: list[ImageItem], fraction: float, seed: int, where: Path | None = None) -> list[ImageItem]:
    """The held-out share of `items` (round(n · fraction) of them); refuses a split that leaves either side empty."""
    items = sorted(items, key=lambda it: str(it.path))
    n_held = round(len(items) * fraction)
    if n_held == 0:
        raise LoraKitError(f"--validation-split {fraction:g} of {len(items)} instance image(s) holds out no image: "
                           f"give a larger share or --validation-data DIR", where)
    if n_held >= len(items):
        raise LoraKitError(f"--validation-split {fraction:g} of {len(items)} instance image(s) leaves no training "
                           f"image", where)
    order = list(range(len(items)))
    random.Random(mix_seed(seed, 0x5E1D)).shuffle(order)
    return [items[i] for i in sorted(order[:n_held])]


def folder(path: Path, defaults: Subset) -> list[ImageItem]:
    """Every image of a validation folder (kohya `N_name` sub-folders too), read as training reads its data."""
    from dataclasses import replace

    path = Path(path)
    if not path.is_dir():
        raise LoraKitError("validation folder does not exist" if not path.exists() else "not a folder", path)
    return [it for s in subsets_in(path, replace(defaults, dir=path)) for it in scan(s)]
