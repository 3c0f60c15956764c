"""What a LoRA does, as numbers and one picture: the same prompts and seeds drawn at several strengths.

For every strength s (the LoRAs' own weights times s; s = 0 is the base model alone):
- drift: mean absolute pixel change from the s = 0 image of the same prompt and seed (0–1 scale).
  On prompts with the trigger word it is how much the LoRA acts; on prompts without, how much it
  leaks into what it should leave alone (base drift).
- on the toy world, where a scorer reads what an image shows: fidelity, the share of images that
  show what their prompt asks for (trigger prompts must show the concept shape).
- a grid, one row per strength and one column per prompt: the X/Y plot of LoRA weight users make
  in AUTOMATIC1111, with the strength and prompt written on it.
Everything is seeded, so two files or two runs compare image for image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import LoraKitError
from .generate import LoraSpec, generate


@dataclass
class StrengthRow:
    strength: float
    drift_trigger: float | None  # mean |Δpixel| against strength 0 on prompts with the trigger
    drift_other: float | None  # … on prompts without it (base drift)
    fidelity_trigger: float | None = None  # toy world: share drawn as asked
    fidelity_other: float | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EvalReport:
    prompts: list[str]
    trigger: str | None
    strengths: list[float]
    rows: list[StrengthRow]
    images: dict = field(repr=False, default_factory=dict)  # (strength, prompt index) → list of PIL images
    seeds: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"prompts": self.prompts, "trigger": self.trigger, "seeds": self.seeds,
                "rows": [r.as_dict() for r in self.rows]}

    def table(self) -> str:
        scored = any(r.fidelity_trigger is not None or r.fidelity_other is not None for r in self.rows)
        head = ["strength", "drift (trigger prompts)", "drift (other prompts)"]
        if scored:
            head += ["fidelity (trigger prompts)", "fidelity (other prompts)"]
        fmt = lambda v, pct=False: "—" if v is None else (f"{v:.0%}" if pct else f"{v:.4f}")  # noqa: E731
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [f"{r.strength:g}", fmt(r.drift_trigger), fmt(r.drift_other)]
            if scored:
                cells += [fmt(r.fidelity_trigger, True), fmt(r.fidelity_other, True)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def grid(self, scale: int | None = None):
        """Rows: strengths; columns: prompts (first seed); labels on the left and on top."""
        from PIL import Image, ImageDraw

        first = self.images[(self.strengths[0], 0)][0]
        scale = scale or max(1, math.ceil(128 / first.width))
        w, h = first.width * scale, first.height * scale
        left, top = 56, 28
        sheet = Image.new("RGB", (left + w * len(self.prompts), top + h * len(self.strengths)), "white")
        draw = ImageDraw.Draw(sheet)
        for j, prompt in enumerate(self.prompts):
            text = prompt if len(prompt) * 6 <= w else prompt[: max(1, w // 6 - 1)] + "…"
            draw.text((left + j * w + 4, 8), text, fill="black")
        for i, s in enumerate(self.strengths):
            draw.text((6, top + i * h + h // 2 - 6), f"{s:g}", fill="black")
            for j in range(len(self.prompts)):
                im = self.images[(s, j)][0].convert("RGB").resize((w, h), Image.NEAREST)
                sheet.paste(im, (left + j * w, top + i * h))
        return sheet


def _as_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _toy_verdict(image, prompt: str) -> bool | None:
    """Whether a toy-world image shows what its caption asks (None: not a toy-world caption)."""
    from .toy import scorer, world

    try:
        want = world.parse_caption(prompt)
    except ValueError:
        return None
    got = scorer.score(image)
    return got["shape"] == want["shape"] and got["color"] == want["color"]


def _require_fits(model, count: int, width: int | None, height: int | None) -> None:
    """Every image of the sweep is kept (and drawn once more in the grid): refuse what cannot fit."""
    from .memory import generation_bytes, require_fits

    pipe = model.pipe
    sample = getattr(model.unet.config, "sample_size", None)  # as generate: Flux's native size when none
    default = sample * 2 ** (len(pipe.vae.config.block_out_channels) - 1) if sample else model.spec.resolution(False)
    w, h = width or default, height or default
    require_fits(generation_bytes(pipe, w, h, count, grid=True), pipe.device,
                 f"a sweep of {count} image(s) of {w}x{h}", "fewer strengths, prompts or --n, or a smaller size")


def evaluate(model, loras: Sequence[LoraSpec], prompts: Sequence[str], *, strengths: Sequence[float] = (0, 0.5, 1),
             trigger: str | None = None, n: int = 1, seed: int = 0, steps: int = 20, guidance: float = 7.0,
             sampler: str = "euler_a", negative: str = "", width: int | None = None, height: int | None = None,
             score: bool | None = None, progress: bool = True, allow_pickle: bool = False) -> EvalReport:
    """Draw every prompt n times (seeds seed…seed+n−1) at every strength and measure the change."""
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise LoraKitError("give at least one prompt (--prompt or --prompts FILE)")
    if not loras:
        raise LoraKitError("give at least one LoRA (--lora FILE[:WEIGHT])")
    for spec in loras:
        if not spec.path.is_file():
            raise LoraKitError("LoRA file not found", spec.path)
    strengths = sorted({float(s) for s in strengths} | {0.0})
    _require_fits(model, len(strengths) * len(prompts) * n, width, height)
    if score is None:
        score = getattr(model, "kind", None) == "toy"
    has_trigger = [bool(trigger) and trigger.lower() in p.lower() for p in prompts]

    from tqdm.auto import tqdm

    images = {}
    bar = tqdm(total=len(strengths) * len(prompts), desc="evaluate", disable=not progress)
    for s in strengths:
        specs = [LoraSpec(spec.path, spec.weight * s) for spec in loras] if s else []
        for j, prompt in enumerate(prompts):
            images[(s, j)] = generate(model, prompt, negative=negative, loras=specs, n=n, steps=steps,
                                      guidance=guidance, seed=seed, width=width, height=height, sampler=sampler,
                                      progress=False, allow_pickle=allow_pickle).images
            bar.update(1)
    bar.close()

    rows = []
    for s in strengths:
        drift = {True: [], False: []}
        verdicts = {True: [], False: []}
        for j, prompt in enumerate(prompts):
            for ref, im in zip(images[(0.0, j)], images[(s, j)]):
                drift[has_trigger[j]].append(float(np.abs(_as_array(im) - _as_array(ref)).mean()))
                if score:
                    verdict = _toy_verdict(im, prompt)
                    if verdict is not None:
                        verdicts[has_trigger[j]].append(verdict)
        mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
        rows.append(StrengthRow(s, mean(drift[True]), mean(drift[False]), mean(verdicts[True]), mean(verdicts[False])))
    return EvalReport(prompts, trigger, strengths, rows, images, [seed + i for i in range(n)])
