"""What a LoRA learned and what it broke: the same prompts and seeds drawn at several strengths.

For every strength s (the LoRAs' own weights times s; s = 0 is the base model alone), on the
LoRA's own prompts (those with the trigger) and on the others:
- subject fidelity (own prompts, with the training images from `data`): DINO and CLIP-I, the
  mean cosine similarity of the images' embeddings to the training images' (DreamBooth's
  measures; lorakit.evaluation.encoders says which models and why);
- prompt fidelity: CLIP-T, the cosine of each image's CLIP embedding and its prompt's;
- drift: how far each image moved from the s = 0 image of the same prompt and seed, in pixels
  (mean |Δ| on a 0–1 scale) and, with the models, in CLIP and DINO features (1 − cosine). On
  prompts without the trigger this is base drift: what the LoRA changes that it should leave;
- on the toy world, where a scorer reads what an image shows: fidelity, the share of images that
  show what their prompt asks for (trigger prompts must show the concept shape);
- a grid, one row per strength and one column per prompt: the X/Y plot of LoRA weight users make
  in AUTOMATIC1111, with the strength and prompt written on it.
A learned model that is not available leaves its figures empty (None) with a note saying why.
Everything is seeded, so two files or two runs compare image for image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import LoraKitError
from . import encoders as enc
from .similarity import feature_distance, mean, mean_pairwise, paired, pixel_distance
from ..generate import LoraSpec, generate

DEFAULT_CLIP, DEFAULT_DINO = enc.DEFAULT_CLIP, enc.DEFAULT_DINO


class Stopped(Exception):
    """An evaluation whose `stop` asked it to end before it was done (a training run's Ctrl-C)."""


@dataclass
class StrengthRow:
    strength: float
    drift_trigger: float | None  # mean |Δpixel| against strength 0 on prompts with the trigger
    drift_other: float | None  # … on prompts without it (base drift)
    fidelity_trigger: float | None = None  # toy world: share drawn as asked
    fidelity_other: float | None = None
    subject_dino: float | None = None  # own prompts' images against the training images, DINO cosine
    subject_clip: float | None = None  # … CLIP image cosine (CLIP-I)
    prompt_clip: float | None = None  # CLIP-T on the own prompts
    prompt_clip_other: float | None = None  # CLIP-T on the other prompts
    drift_clip_other: float | None = None  # base drift in CLIP features (1 − cosine to the strength-0 image)
    drift_dino_other: float | None = None
    drift_clip_trigger: float | None = None
    drift_dino_trigger: float | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PromptRow:
    """One prompt at one strength, averaged over its seeds."""

    strength: float
    prompt: str
    own: bool
    drift: float
    drift_clip: float | None = None
    drift_dino: float | None = None
    prompt_clip: float | None = None
    subject_dino: float | None = None
    subject_clip: float | None = None
    fidelity: float | None = None

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
    own: list[bool] = field(default_factory=list)
    per_prompt: list[PromptRow] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # what was not measured, and why
    models: dict[str, str | None] = field(default_factory=dict)
    reference: dict = field(default_factory=dict)  # the training images' similarity among themselves
    data: list[str] = field(default_factory=list)
    data_images: list = field(repr=False, default_factory=list)
    text_prompts: list[str] = field(default_factory=list)  # what CLIP-T compared each prompt's images with
    loras: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    checkpoints: dict = field(default_factory=dict)  # a training run's board (lorakit.train.best), if any

    def as_dict(self) -> dict:
        board = {"checkpoints": self.checkpoints} if self.checkpoints else {}
        return {**board, "prompts": self.prompts, "trigger": self.trigger, "own": self.own, "seeds": self.seeds,
                "strengths": self.strengths, "loras": self.loras, "settings": self.settings, "models": self.models,
                "notes": self.notes, "data": self.data, "reference": self.reference,
                "text_prompts": self.text_prompts, "rows": [r.as_dict() for r in self.rows],
                "per_prompt": [r.as_dict() for r in self.per_prompt]}

    def row(self, strength: float) -> StrengthRow:
        return next(r for r in self.rows if r.strength == float(strength))

    def table(self) -> str:
        cols = [("drift (trigger prompts)", "drift_trigger", "f"), ("drift (other prompts)", "drift_other", "f"),
                ("fidelity (trigger prompts)", "fidelity_trigger", "%"),
                ("fidelity (other prompts)", "fidelity_other", "%"),
                ("subject DINO", "subject_dino", "f"), ("subject CLIP-I", "subject_clip", "f"),
                ("prompt CLIP-T", "prompt_clip", "f"), ("base drift CLIP", "drift_clip_other", "f"),
                ("base drift DINO", "drift_dino_other", "f")]
        measured = [c for i, c in enumerate(cols)
                    if i < 2 or any(getattr(r, c[1]) is not None for r in self.rows)]
        fmt = lambda v, kind: "—" if v is None else (f"{v:.0%}" if kind == "%" else f"{v:.4f}")  # noqa: E731
        lines = ["| strength | " + " | ".join(c[0] for c in measured) + " |", "|" + "---|" * (len(measured) + 1)]
        for r in self.rows:
            lines.append(f"| {r.strength:g} | " + " | ".join(fmt(getattr(r, c[1]), c[2]) for c in measured) + " |")
        return "\n".join(lines + [f"note: {n}" for n in self.notes.values()])

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


def _toy_verdict(image, prompt: str) -> bool | None:
    """Whether a toy-world image shows what its caption asks (None: not a toy-world caption)."""
    from ..toy import scorer, world

    try:
        want = world.parse_caption(prompt)
    except ValueError:
        return None
    got = scorer.score(image)
    return got["shape"] == want["shape"] and got["color"] == want["color"]


def training_images(data) -> list[Path]:
    """The instance images of a dataset folder (kohya `N_name` sub-folders too) or dataset TOML;
    regularisation subsets are left out: they are not the subject."""
    from ..data import load_dataset_config, scan, subsets_in

    data = Path(data)
    if data.suffix.lower() == ".toml":
        if not data.is_file():
            raise LoraKitError("dataset config does not exist", data)
        subsets = load_dataset_config(data).subsets
    else:
        subsets = subsets_in(data)
    return [item.path for s in subsets if not s.is_reg for item in scan(s)]


def _load_images(paths: Sequence[Path]) -> list:
    from ..data.folders import load_rgb

    return [load_rgb(p) for p in paths]


def _draw(model, loras, network, prompts, strengths, n, seed, gen: dict, base_cache, progress,
          allow_pickle: bool = False, stop: Callable[[], bool] | None = None) -> dict:
    from tqdm.auto import tqdm

    images = {}
    start = network.multiplier if network is not None else None
    bar = tqdm(total=len(strengths) * len(prompts), desc="evaluate", disable=not progress)
    try:
        for s in strengths:
            if network is not None:
                network.multiplier = start * s
            specs = [LoraSpec(spec.path, spec.weight * s) for spec in loras] if s and network is None else []
            for j, prompt in enumerate(prompts):
                key = (prompt, seed, n, tuple(sorted(gen.items())))
                if s == 0 and base_cache is not None and key in base_cache:
                    images[(s, j)] = base_cache[key]
                else:
                    if stop is not None and stop():
                        raise Stopped
                    images[(s, j)] = generate(model, prompt, loras=specs, n=n, seed=seed, progress=False,
                                              allow_pickle=allow_pickle, **gen).images
                    if s == 0 and base_cache is not None:
                        base_cache[key] = images[(s, j)]
                bar.update(1)
    finally:
        bar.close()
        if network is not None:
            network.multiplier = start
    return images


def _require_fits(model, count: int, width: int | None, height: int | None) -> None:
    """Every image of the sweep is kept (and drawn once more in the grid): refuse what cannot fit."""
    from ..fit_check import generation_bytes, require_fits

    pipe = model.pipe
    sample = getattr(model.unet.config, "sample_size", None)  # as generate: Flux's native size when none
    default = sample * 2 ** (len(pipe.vae.config.block_out_channels) - 1) if sample else model.spec.resolution(False)
    w, h = width or default, height or default
    require_fits(generation_bytes(pipe, w, h, count, grid=True), pipe.device,
                 f"a sweep of {count} image(s) of {w}x{h}", "fewer strengths, prompts or --n, or a smaller size")


def evaluate(model, loras: Sequence[LoraSpec], prompts: Sequence[str], *, strengths: Sequence[float] = (0, 0.5, 1),
             trigger: str | None = None, n: int = 1, seed: int = 0, steps: int = 20, guidance: float = 7.0,
             sampler: str = "euler_a", negative: str = "", width: int | None = None, height: int | None = None,
             score: bool | None = None, progress: bool = True, data=None, clip_model: str | None = DEFAULT_CLIP,
             dino_model: str | None = DEFAULT_DINO, class_word: str | None = None,
             own: Sequence[bool] | None = None, network=None, base_cache: dict | None = None,
             allow_pickle: bool = False, stop: Callable[[], bool] | None = None) -> EvalReport:
    """Draw every prompt n times (seeds seed…seed+n−1) at every strength and measure the change.

    data: the training images (a folder, a dataset TOML, or a list of paths/PIL images) for
    subject fidelity. clip_model / dino_model: folder or hub id (read offline), None to skip.
    class_word: replaces the trigger in the text CLIP-T compares with (CLIP never learned the
    trigger: DreamBooth scores "a dog on the beach" for "a sks dog on the beach").
    own: which prompts are the LoRA's own (default: those containing the trigger).
    network: a LoRANetwork already applied to `model` (a run in progress), swept through its
    multiplier instead of loading `loras`. base_cache: a dict that keeps the strength-0 images
    between calls (the base does not change during a run). stop: asked before each image and before
    the scoring; True ends the evaluation with `Stopped`.
    """
    if own is not None:
        if len(own) != len(prompts):
            raise ValueError("own needs one flag per prompt")
        kept = [(p.strip(), bool(o)) for p, o in zip(prompts, own) if p and p.strip()]
    else:
        kept = [(p.strip(), bool(trigger) and trigger.lower() in p.lower()) for p in prompts if p and p.strip()]
    prompts, own = [p for p, _ in kept], [o for _, o in kept]
    if not prompts:
        raise LoraKitError("give at least one prompt (--prompt or --prompts FILE)")
    if not loras and network is None:
        raise LoraKitError("give at least one LoRA (--lora FILE[:WEIGHT])")
    for spec in loras:
        if not spec.path.is_file():
            raise LoraKitError("LoRA file not found", spec.path)
    strengths = sorted({float(s) for s in strengths} | {0.0})
    _require_fits(model, len(strengths) * len(prompts) * n, width, height)
    if score is None:
        score = getattr(model, "kind", None) == "toy"
    gen = dict(negative=negative, steps=steps, guidance=guidance, width=width, height=height, sampler=sampler)
    images = _draw(model, loras, network, prompts, strengths, n, seed, gen, base_cache, progress, allow_pickle, stop)
    if stop is not None and stop():
        raise Stopped

    notes: dict[str, str] = {}
    device = getattr(model.pipe, "device", None)
    clip, notes_clip = enc.load("clip", clip_model, device)
    dino, notes_dino = enc.load("dino", dino_model, device)
    for key, note in (("clip", notes_clip), ("dino", notes_dino)):
        if note:
            notes[key] = note
    data_paths: list[str] = []
    data_images: list = []
    if data is not None:
        if isinstance(data, (str, Path)):
            paths = training_images(data)
            data_paths, data_images = [str(p) for p in paths], _load_images(paths)
        else:
            data_images = [_load_images([x])[0] if isinstance(x, (str, Path)) else x for x in data]
            data_paths = [str(x) for x in data if isinstance(x, (str, Path))]
    if not data_images:
        notes["subject"] = ("no training images given (--data): subject fidelity (DINO, CLIP-I) compares the LoRA's "
                            "images with them, so it was not computed.")
    elif not any(own):
        notes["subject"] = ("no prompt is the LoRA's own (none contains the trigger): subject fidelity was not "
                            "computed.")
    text_prompts = [p if not (class_word and trigger and o) else _replace(p, trigger, class_word)
                    for p, o in zip(prompts, own)]

    keys = [(s, j) for s in strengths for j in range(len(prompts))]
    emb: dict[str, dict] = {}
    ref: dict[str, object] = {}
    reference = {"images": len(data_images)}
    for name, encoder in (("clip", clip), ("dino", dino)):
        if encoder is None:
            continue
        flat = encoder.images([im for k in keys for im in images[k]])
        emb[name] = {k: flat[i * n:(i + 1) * n] for i, k in enumerate(keys)}
        if data_images:
            ref[name] = encoder.images(data_images)
            reference[name] = mean_pairwise(ref[name], ref[name], skip_diagonal=True)
    text_emb = clip.texts(text_prompts) if clip is not None else None

    per_prompt: list[PromptRow] = []
    for s in strengths:
        for j, prompt in enumerate(prompts):
            k = (s, j)
            row = PromptRow(s, prompt, own[j], mean(pixel_distance(a, b) for a, b in zip(images[k], images[(0.0, j)])))
            for name in emb:  # strength 0 is the reference itself: exactly 0, not 1 − (x·x) in float32
                setattr(row, f"drift_{name}", 0.0 if s == 0 else
                        float(feature_distance(emb[name][k], emb[name][(0.0, j)]).mean()))
                if own[j] and name in ref:
                    setattr(row, f"subject_{name}", mean_pairwise(emb[name][k], ref[name]))
            if text_emb is not None:
                row.prompt_clip = float(paired(emb["clip"][k], text_emb[j:j + 1].expand(n, -1)).mean())
            if score:
                row.fidelity = mean(_toy_verdict(im, prompt) for im in images[k])
            per_prompt.append(row)

    rows = []
    for s in strengths:
        mine = [r for r in per_prompt if r.strength == s and r.own]
        others = [r for r in per_prompt if r.strength == s and not r.own]
        group = lambda rs, attr: mean(getattr(r, attr) for r in rs)  # noqa: E731
        rows.append(StrengthRow(
            s, group(mine, "drift"), group(others, "drift"), group(mine, "fidelity"), group(others, "fidelity"),
            subject_dino=group(mine, "subject_dino"), subject_clip=group(mine, "subject_clip"),
            prompt_clip=group(mine, "prompt_clip"), prompt_clip_other=group(others, "prompt_clip"),
            drift_clip_other=group(others, "drift_clip"), drift_dino_other=group(others, "drift_dino"),
            drift_clip_trigger=group(mine, "drift_clip"), drift_dino_trigger=group(mine, "drift_dino")))
    return EvalReport(
        prompts, trigger, strengths, rows, images, [seed + i for i in range(n)], own=own, per_prompt=per_prompt,
        notes=notes, models={"clip": clip.name if clip else None, "dino": dino.name if dino else None},
        reference=reference, data=data_paths, data_images=data_images, text_prompts=text_prompts,
        loras=[{"path": str(spec.path), "weight": spec.weight} for spec in loras] if network is None else
        [{"path": "(training run in progress)", "weight": network.multiplier}],
        settings={"model": str(getattr(model, "source", "") or ""), "n": n, **{k: v for k, v in gen.items()},
                  "scored_by_toy_scorer": bool(score)})


def _replace(prompt: str, trigger: str, word: str) -> str:
    import re

    return re.sub(re.escape(trigger), word, prompt, flags=re.IGNORECASE)


