"""A training folder as the Dataset tab shows it: each image with its caption, the captions' tag
counts, and the problems the trainer would stop on, found before a run starts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..data.buckets import make_buckets, nearest_bucket
from ..data.captions import CAPTION_EXTS, caption_file, read_caption, tags
from ..data.folders import IMAGE_EXTS, image_size, subsets_in
from ..errors import LoraKitError


@dataclass
class Entry:
    image: Path
    caption: str
    caption_path: Path | None
    size: tuple[int, int] | None  # None: unreadable
    problem: str | None = None


def review(folder: Path, resolution: int = 512, step: int = 64, max_upscale: float = 2.0) -> list[Entry]:
    """Every image of the folder (and its `N_name` repeat sub-folders) with what the trainer
    would say about it: unreadable, or smaller than its bucket allows (`max_upscale`)."""
    step = step if resolution % step == 0 else 8
    buckets = make_buckets(resolution, step)
    entries = []
    for subset in subsets_in(folder):
        for path in sorted(p for p in subset.dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS):
            cap = caption_file(path)
            try:
                caption = read_caption(cap) if cap else ""
            except LoraKitError as exc:
                caption = ""
                entries.append(Entry(path, "", cap, None, exc.message))
                continue
            entry = Entry(path, caption, cap, None)
            try:
                entry.size = image_size(path)
            except LoraKitError as exc:
                entry.problem = exc.message
            else:
                w, h = entry.size
                bw, bh = nearest_bucket(w, h, buckets)
                if max(bw / w, bh / h) > max_upscale:
                    entry.problem = (f"{w}×{h} is too small for its {bw}×{bh} bucket at resolution {resolution} "
                                     f"(at most {max_upscale:g}× enlargement)")
            entries.append(entry)
    return entries


def orphan_captions(folder: Path) -> list[Path]:
    """Caption files with no image of the same name (the trainer refuses them)."""
    out = []
    for subset in subsets_in(folder):
        stems = {p.stem for p in subset.dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
        out += [p for p in sorted(subset.dir.iterdir()) if p.suffix in CAPTION_EXTS and p.stem not in stems]
    return out


def tag_counts(entries: list[Entry]) -> list[tuple[str, int]]:
    return Counter(t for e in entries for t in tags(e.caption)).most_common()


def save_caption(image: Path, text: str) -> Path:
    """Write the caption next to the image (its existing caption file, else NAME.txt), atomically."""
    from ..formats.st_io import write_bytes_atomic

    image = Path(image)
    if not image.is_file():
        raise LoraKitError("no such image", image)
    target = caption_file(image) or image.with_suffix(".txt")
    write_bytes_atomic(target, (" ".join((text or "").split()) + "\n").encode("utf-8"))
    return target


def thumbnail(path: Path, side: int = 160):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            scale = side // max(im.size)
            return im.resize((im.width * scale, im.height * scale), Image.NEAREST) if scale > 1 else im
    except OSError:
        return Image.new("RGB", (side, side), (200, 60, 60))  # unreadable: a red tile
