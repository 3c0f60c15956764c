"""Dataset folders: images with same-name caption files, and kohya's `N_name` repeat folders.

`photos/` holds images directly (repeats 1), or sub-folders named `10_sks dog` (each image seen
10 times per epoch; `sks dog` is the caption of images that have no caption file), or both.
Everything is checked before training starts so that a bad file stops the run at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import LoraKitError
from .captions import CAPTION_EXTS, caption_file, read_caption, with_affixes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_REPEAT_DIR = re.compile(r"^(\d+)_(.*)$")


@dataclass
class Subset:
    """One folder of images and how to read it (kohya's per-subset options)."""

    dir: Path
    repeats: int = 1
    class_tokens: str = ""
    caption_ext: str | None = None
    keep_tokens: int = 0
    shuffle_caption: bool = False
    caption_dropout: float = 0.0
    flip: bool = False
    is_reg: bool = False
    name: str = ""
    # sd-scripts' subset options (library/config_util.py), with its meaning (lorakit.data.captions)
    caption_prefix: str = ""
    caption_suffix: str = ""
    keep_tokens_separator: str = ""
    caption_tag_dropout: float = 0.0
    secondary_separator: str = ""
    enable_wildcard: bool = False
    color_aug: bool = False
    random_crop: bool = False

    def __post_init__(self):
        self.dir = Path(self.dir)
        self.name = self.name or self.dir.name


@dataclass
class ImageItem:
    path: Path
    caption: str
    subset: Subset
    size: tuple[int, int] = field(default=(0, 0))  # (width, height)


def subsets_in(path: Path, defaults: Subset | None = None) -> list[Subset]:
    """The folder itself if it holds images, plus every `N_name` sub-folder."""
    path = Path(path)
    if not path.is_dir():
        raise LoraKitError("dataset folder does not exist" if not path.exists() else "not a folder", path)
    base = defaults or Subset(path)
    out = []
    if any(_is_image(p) for p in path.iterdir()):
        out.append(replace(base, dir=path, name=path.name))
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        m = _REPEAT_DIR.match(sub.name)
        if m:
            out.append(replace(base, dir=sub, repeats=int(m[1]), class_tokens=m[2].strip() or base.class_tokens,
                               name=sub.name))
    if not out:
        raise LoraKitError(f"no images in the folder (looked for {', '.join(IMAGE_EXTS)} and N_name "
                           "repeat sub-folders)", path)
    return out


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS


def scan(subset: Subset) -> list[ImageItem]:
    """Every image of a subset with its caption; errors for unreadable images and orphan captions."""
    if not subset.dir.is_dir():
        raise LoraKitError("dataset folder does not exist", subset.dir)
    files = sorted(subset.dir.iterdir())
    images = [p for p in files if _is_image(p)]
    if not images:
        raise LoraKitError(f"no images in the folder (looked for {', '.join(IMAGE_EXTS)})", subset.dir)
    stems = {p.stem for p in images}
    exts = (subset.caption_ext,) if subset.caption_ext else CAPTION_EXTS
    for p in files:
        if p.is_file() and p.suffix in exts and p.stem not in stems:
            raise LoraKitError("caption file has no image of the same name", p)
    items = []
    for img in images:
        cap_path = caption_file(img, subset.caption_ext)
        caption = read_caption(cap_path, lines=subset.enable_wildcard) if cap_path else subset.class_tokens
        caption = with_affixes(caption, subset.caption_prefix, subset.caption_suffix)
        items.append(ImageItem(img, caption, subset, image_size(img)))
    return items


# EXIF orientations that turn the picture a quarter: width and height swap once it is upright
_QUARTER_TURNS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def image_size(path: Path) -> tuple[int, int]:
    """Width and height as the picture is meant to be seen (after its EXIF rotation)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                turned = im.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS
            except (OSError, SyntaxError, ValueError):
                turned = False  # a truncated file: decoding it (load_rgb) names the problem
            return (h, w) if turned else (w, h)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise LoraKitError(f"cannot read image ({exc.__class__.__name__})", path) from None


def load_rgb(path: Path) -> Image.Image:
    """The decoded image in 8-bit RGB, upright: EXIF rotation applied, alpha composited on white,
    CMYK and palettes converted, 16-bit samples scaled (not clipped) to 8 bits."""
    from PIL import ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise LoraKitError(f"cannot read image ({exc.__class__.__name__}: {' '.join(str(exc).split())[:120]})",
                           path) from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any decoded PIL image as 8-bit RGB, the way a viewer shows it."""
    if im.mode.startswith("I;16") or im.mode == "I":
        # PIL's own I;16 → RGB conversion clips at 255 (a 16-bit photo turns white); 65535 → 255
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")
