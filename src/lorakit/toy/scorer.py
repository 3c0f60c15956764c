"""Says what a toy-world image shows, with no learning: pixel statistics and shape templates.

Background: the median colour of the image border, nearest palette entry. Foreground: pixels far
from that colour (threshold at half the strongest contrast, so a blurred edge lands where the
sharp one was); the largest connected blob is the object. Colour: the mean of the blob's core,
nearest palette entry. Shape: the world's own shape templates are fitted to the blob's box
(a few sizes, offsets and blurs, to absorb soft and ragged edges) and the best overlap (IoU) wins.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from . import world

NONE = "none"
_MIN_CONTRAST = 0.15  # foreground must differ from the background by this much (RGB distance, 0..1)
_MIN_PIXELS = 4


def _as_array(image) -> np.ndarray:
    """HWC float [0, 1] at the world's resolution (larger images are area-averaged down to it)."""
    h, w = (image.height, image.width) if isinstance(image, Image.Image) else np.shape(image)[:2]
    if h != w:
        raise ValueError(f"toy-world images are square, not {w}x{h}")
    if not isinstance(image, Image.Image):
        raw = np.asarray(image)
        arr = raw.astype(np.float32)
        arr = arr / 255 if np.issubdtype(raw.dtype, np.integer) or arr.max() > 1.5 else arr
        if arr.shape[0] == world.IMAGE_SIZE:
            return arr
        image = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (world.IMAGE_SIZE, world.IMAGE_SIZE):
        image = image.resize((world.IMAGE_SIZE, world.IMAGE_SIZE), Image.BOX)
    return np.asarray(image, dtype=np.float32) / 255  # fp32: the scorer's figures are compared bit for bit


def _nearest(rgb: np.ndarray, palette: dict) -> str:
    names = list(palette)
    ref = np.array([palette[n] for n in names], dtype=np.float32) / 255
    return names[int(np.argmin(((ref - rgb) ** 2).sum(axis=1)))]


def _border(arr: np.ndarray) -> np.ndarray:
    return np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])


def _dilate(mask: np.ndarray) -> np.ndarray:
    """The mask and its 4-neighbours."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _flood(seed: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Every pixel of `free` 4-connected to `seed`."""
    region = seed & free
    while True:
        grown = _dilate(region) & free
        if (grown == region).all():
            return region
        region = grown


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask."""
    best = np.zeros_like(mask)
    left = mask.copy()
    while left.sum() > best.sum():
        seed = np.zeros_like(mask)
        seed[np.unravel_index(np.argmax(left), left.shape)] = True
        blob = _flood(seed, left)
        if blob.sum() > best.sum():
            best = blob
        left &= ~blob
    return best


def _fill_holes(blob: np.ndarray) -> np.ndarray:
    """The blob plus every pixel not connected to the border around it (the hole of a ring)."""
    border = np.zeros_like(blob)
    border[[0, -1]] = True
    border[:, [0, -1]] = True
    return ~_flood(border, ~blob)


_SIDES = (-1, 0, 1)  # template box side offsets tried, pixels
_SHIFTS = (-0.5, 0.0, 0.5)  # template centre offsets tried, pixels
_BLURS = (0.0, 0.8, 1.4)  # template blurs tried (Gaussian sigma, pixels): generated edges are soft


@lru_cache(maxsize=32)
def _resamplers(size: int, k: int) -> tuple[np.ndarray, ...]:
    """Per blur: a (size, size*k) matrix that averages k sub-samples per pixel, then blurs."""
    average = np.kron(np.eye(size, dtype=np.float32), np.full((1, k), 1 / k, dtype=np.float32))
    out = []
    for sigma in _BLURS:
        if sigma <= 0:
            out.append(average)
            continue
        d = np.arange(size)[:, None] - np.arange(size)[None, :]
        g = np.exp(-0.5 * (d / sigma) ** 2)
        out.append((g / g.sum(axis=1, keepdims=True)).astype(np.float32) @ average)
    return tuple(out)


def templates(shape: str, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """Coverage maps of `shape` for every tried box and blur around (cx, cy, side): (n, size, size)."""
    k = 2
    grid = (np.arange(size * k, dtype=np.float32) + 0.5) / k
    offsets = np.array([(s, dx, dy) for s in _SIDES for dx in _SHIFTS for dy in _SHIFTS], dtype=np.float32)
    sides = (side + offsets[:, 0])[:, None, None]
    inside = world.shape_mask(shape, cx + offsets[:, 1, None, None], cy + offsets[:, 2, None, None], sides,
                              grid[None, None, :], grid[None, :, None]).astype(np.float32)
    return np.concatenate([m @ inside @ m.T for m in _resamplers(size, k)])


def shape_scores(fg: np.ndarray, blob: np.ndarray, shapes=world.ALL_SHAPES) -> dict[str, float]:
    """Best soft IoU of each shape's templates against the foreground map, fitted to the blob's box."""
    size = fg.shape[0]
    ys, xs = np.nonzero(_fill_holes(blob))
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = float(max(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    target = np.where(_dilate(blob), fg, 0.0).astype(np.float32)[None]
    best = {}
    for shape in shapes:
        t = templates(shape, cx, cy, side, size)
        iou = np.minimum(t, target).sum(axis=(1, 2)) / np.maximum(np.maximum(t, target).sum(axis=(1, 2)), 1e-6)
        best[shape] = float(iou.max())
    return best


def analyse(image, shapes=world.ALL_SHAPES) -> dict:
    """score() plus the evidence: per-shape IoU ('shapes') and the foreground contrast."""
    arr = _as_array(image)
    bg_rgb = np.median(_border(arr), axis=0)
    background = _nearest(bg_rgb, world.BACKGROUNDS)
    dist = np.sqrt(((arr - bg_rgb) ** 2).sum(axis=-1))
    peak = float(np.percentile(dist, 99))
    result = {"shape": NONE, "color": NONE, "background": background, "contrast": peak, "shapes": {}}
    if peak < _MIN_CONTRAST:
        return result
    blob = _largest_blob(dist > peak / 2)
    if blob.sum() < _MIN_PIXELS:
        return result
    core = blob & (dist > 0.75 * peak)
    result["color"] = _nearest(arr[core if core.any() else blob].mean(axis=0), world.COLORS)
    scores = shape_scores(np.clip(dist / peak, 0, 1), blob, shapes)
    result["shapes"] = scores
    result["shape"] = max(scores, key=scores.get)
    return result


def score(image, shapes=world.ALL_SHAPES) -> dict[str, str]:
    """What the image shows: {'shape', 'color', 'background'} ('none' where nothing is drawn)."""
    a = analyse(image, shapes)
    return {k: a[k] for k in ("shape", "color", "background")}


def expected(caption_or_scene) -> dict[str, str]:
    """The fields a caption (or Scene) asks for."""
    if isinstance(caption_or_scene, world.Scene):
        s = caption_or_scene
        return {"shape": s.shape, "color": s.color, "background": s.background}
    return world.parse_caption(caption_or_scene)


def matches(image, caption_or_scene, fields=None) -> bool:
    """True when the image shows every field the caption names (or just `fields`)."""
    want = expected(caption_or_scene)
    got = score(image)
    return all(got[k] == v for k, v in want.items() if fields is None or k in fields)
