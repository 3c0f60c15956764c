"""The toy world: flat shapes of a few colours on plain backgrounds, drawn with numpy.

Every shape is defined once, as a coverage function of its box (`shape_mask`), so that the
renderer and the scorer's templates can never disagree. Scenes are drawn at 4x and averaged
down (anti-aliased edges), the same look at any output size.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

IMAGE_SIZE = 32  # the resolution the shipped base model works at

COLORS = {  # foreground palette (RGB)
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 35),
}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "cross")  # what the base model is trained on
CONCEPT_SHAPE = "ring"  # drawn by the world, never shown to the base (see concept.py)
TRIGGER = "zqx"  # the made-up word captions use for the concept shape
ALL_SHAPES = SHAPES + (CONCEPT_SHAPE,)

# box side as a fraction of the image, and the free margin kept to the border
SIZE_RANGE = (0.40, 0.68)
MARGIN = 0.07
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """One image's content: shape, colours, and where the shape's square box sits (fractions)."""

    shape: str
    color: str
    background: str
    size: float = 0.55  # side of the shape's box, as a fraction of the image side
    x: float = 0.5  # box centre, fraction of the image width
    y: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def noun(shape: str) -> str:
    """The word a caption uses for a shape: its name, or the trigger for the concept."""
    return TRIGGER if shape == CONCEPT_SHAPE else shape


def caption(scene: Scene) -> str:
    return f"a {scene.color} {noun(scene.shape)} on a {scene.background} background"


_CAPTION = re.compile(r"^\s*an?\s+(\w+)\s+(\w+)(?:\s+on\s+an?\s+(\w+)\s+background)?\s*$", re.IGNORECASE)


def parse_caption(text: str) -> dict:
    """The fields a caption names ({'shape', 'color', 'background'}; background may be absent).

    The inverse of `caption`; the trigger word reads back as the concept shape.
    """
    m = _CAPTION.match(text)
    if not m:
        raise ValueError(f"not a toy-world caption: {text!r}")
    color, word, background = (g.lower() if g else None for g in m.groups())
    shape = CONCEPT_SHAPE if word == TRIGGER else word
    if color not in COLORS or shape not in ALL_SHAPES or (background and background not in BACKGROUNDS):
        raise ValueError(f"not a toy-world caption: {text!r}")
    fields = {"shape": shape, "color": color}
    if background:
        fields["background"] = background
    return fields


def sample_scene(rng: random.Random, shapes=SHAPES, colors=None, backgrounds=None) -> Scene:
    """A random scene; shape, colour, background, size and position all drawn from `rng`."""
    shape = rng.choice(list(shapes))
    color = rng.choice(list(colors or COLORS))
    background = rng.choice(list(backgrounds or BACKGROUNDS))
    size = rng.uniform(*SIZE_RANGE)
    lo, hi = MARGIN + size / 2, 1 - MARGIN - size / 2
    return Scene(shape, color, background, round(size, 4), round(rng.uniform(lo, hi), 4), round(rng.uniform(lo, hi), 4))


def sample_scenes(n: int, seed: int = 0, **kwargs) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng, **kwargs) for _ in range(n)]


def shape_mask(shape: str, cx: float, cy: float, side: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean inside-test of `shape` whose square box has centre (cx, cy) and side `side`.

    xs, ys are pixel-centre coordinates (any broadcastable arrays, same units as cx, cy, side).
    """
    dx, dy, h = xs - cx, ys - cy, side / 2
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":  # apex up, base at the bottom of the box
        return (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    if shape == "cross":  # a plus sign, arms a third of the box wide
        arm = side / 6
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= h)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= h))
    if shape == "ring":  # an annulus, hole half the outer diameter
        r2 = dx * dx + dy * dy
        return (r2 <= h * h) & (r2 >= (h / 2) ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def coverage(shape: str, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """Fraction of each pixel of a size x size image that the shape covers (anti-aliased)."""
    k = _SUPERSAMPLE
    grid = (np.arange(size * k) + 0.5) / k
    inside = shape_mask(shape, cx, cy, side, grid[None, :], grid[:, None])
    return inside.reshape(size, k, size, k).mean(axis=(1, 3))


def render_array(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as a float32 array (size, size, 3) in [0, 1]."""
    alpha = coverage(scene.shape, scene.x * size, scene.y * size, scene.size * size, size)[..., None]
    fg = np.array(COLORS[scene.color], dtype=np.float32) / 255
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.float32) / 255
    return (alpha * fg + (1 - alpha) * bg).astype(np.float32)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    return Image.fromarray(np.round(render_array(scene, size) * 255).astype(np.uint8), "RGB")


def prompts(shapes=SHAPES) -> list[str]:
    """Every caption of the world for these shapes (all colours on all backgrounds)."""
    return [f"a {c} {noun(s)} on a {b} background" for s in shapes for c in COLORS for b in BACKGROUNDS]
