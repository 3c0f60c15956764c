"""Quality as numbers: generate toy-world prompts with a pipeline and let the scorer judge them.

Everything is seeded: the same pipeline, prompts and seed give the same images and figures.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from . import scorer, world

STEPS = 20  # DDIM steps used for every evaluation
GUIDANCE = 5.0


@dataclass
class Report:
    """Rates over the generated sample; `rows` holds (prompt, what the scorer saw) per image."""

    n: int
    shape: float  # fraction whose shape is the asked one
    color: float
    background: float
    shape_and_color: float
    all: float  # shape, colour and background all right
    rows: list = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("n", "shape", "color", "background", "shape_and_color", "all")}


def generate(pipe, prompts, seed: int = 0, steps: int = STEPS, guidance: float = GUIDANCE, batch: int = 16,
             negative: str | None = None) -> list[np.ndarray]:
    """One image per prompt (HWC float arrays in [0, 1]); image i uses generator seed `seed + i`."""
    images = []
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start:start + batch])
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np",
                   negative_prompt=None if negative is None else [negative] * len(chunk))
        images.extend(np.asarray(img, dtype=np.float32) for img in out.images)
    return images


def judge(images, prompts) -> Report:
    rows, hits = [], {k: 0 for k in ("shape", "color", "background", "shape_and_color", "all")}
    for image, prompt in zip(images, prompts):
        want, got = scorer.expected(prompt), scorer.score(image)
        ok = {k: got[k] == want[k] for k in ("shape", "color") if k in want}
        ok["background"] = got["background"] == want.get("background", got["background"])
        ok["shape_and_color"] = ok["shape"] and ok["color"]
        ok["all"] = ok["shape_and_color"] and ok["background"]
        for k in hits:
            hits[k] += ok[k]
        rows.append((prompt, got))
    n = max(len(rows), 1)
    return Report(len(rows), *(hits[k] / n for k in ("shape", "color", "background", "shape_and_color", "all")),
                  rows=rows)


def sample_prompts(n: int, seed: int = 0, shapes=world.SHAPES) -> list[str]:
    """n captions of random scenes of these shapes (colour and background drawn too)."""
    return [world.caption(s) for s in world.sample_scenes(n, seed=seed, shapes=shapes)]


def base_accuracy(pipe, prompts=None, n: int = 48, seed: int = 0, **gen) -> Report:
    """How often the pipeline draws what a base-world caption asks for.

    prompts: captions or Scenes to cycle through; by default every base caption in turn
    (each shape x colour x background), so n=48 covers each once.
    """
    pool = [world.caption(p) if isinstance(p, world.Scene) else p for p in (prompts or world.prompts())]
    chosen = [pool[i % len(pool)] for i in range(n)]
    return judge(generate(pipe, chosen, seed=seed, **gen), chosen)


def concept_fidelity(pipe, trigger: str = world.TRIGGER, n: int = 24, seed: int = 0, **gen) -> Report:
    """How often "a <colour> <trigger> on a <background> background" comes out as the concept shape.

    Colours and backgrounds are drawn from `seed`; `shape` is the fidelity figure, `all` also
    needs the right colour and background.
    """
    rng = random.Random(seed)
    prompts = [f"a {rng.choice(list(world.COLORS))} {trigger} on a {rng.choice(list(world.BACKGROUNDS))} background"
               for _ in range(n)]
    images = generate(pipe, prompts, seed=seed, **gen)
    wanted = [p.replace(f" {trigger} ", f" {world.TRIGGER} ") for p in prompts]
    return judge(images, wanted)
