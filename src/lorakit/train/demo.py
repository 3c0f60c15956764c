"""`lorakit demo`: teach the toy base a shape it has never seen, through the real training path,
and measure what happened.

The toy world's concept (a ring, called by a made-up trigger word) is trained with `run()` like
any user's LoRA. Then the same prompts and seeds are drawn without and with the LoRA: before.png
and after.png show it, the scorer turns it into numbers (report.json):
- concept fidelity: prompts with the trigger that come out as the concept shape;
- base accuracy: base-world prompts (no trigger) drawn right, which the LoRA must not spoil.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from .config import TrainConfig

DEFAULT_STEPS = 300
FIDELITY_GOAL, KEEP_GOAL = 0.95, 0.95


def demo_config(out: Path, steps: int = DEFAULT_STEPS, seed: int = 0, progress: bool = True,
                model: str = "toy", prior: bool = True, **overrides) -> TrainConfig:
    """The LoRA the demo trains: the shipped concept images, prior preservation on base-world prompts."""
    from ..toy import concept

    out = Path(out)
    cfg = TrainConfig(
        model=model, data=concept.dataset_path(), trigger=concept.TRIGGER, resolution=32, steps=steps,
        rank=8, alpha=8.0, lr=2e-3, batch_size=4, scheduler="cosine", warmup_steps=max(1, steps // 20),
        train_text_encoder=True, text_encoder_lr=1e-3, flip=True, seed=seed,
        class_prompt=str(out / "class_prompts.txt"), class_data=out / "class_images", num_class_images=48,
        class_steps=20, class_guidance=5.0, prior_weight=1.0,
        out=out / "lora.safetensors", run_dir=out / "run", progress=progress, tensorboard=True, save_dtype="fp16")
    if not prior:
        cfg = dataclasses.replace(cfg, class_prompt=None, class_data=None)
    return cfg.override(overrides)


def write_class_prompts(path: Path) -> Path:
    """Every base-world caption: the class images keep the base's whole world in view."""
    from ..toy import world

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(world.prompts()) + "\n", encoding="utf-8")
    return path


def _sheet(pipe, prompts, seed: int, path: Path, scale: int = 4) -> None:
    """The prompts' images in a grid, enlarged so 32-pixel images can be seen."""
    import numpy as np
    from PIL import Image

    from ..toy.evaluate import generate
    from .sampling import grid, save_png

    images = [Image.fromarray(np.round(a * 255).astype("uint8")) for a in generate(pipe, prompts, seed=seed)]
    images = [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in images]
    save_png(grid(images, cols=len(images) // 2 or 1), path)


def evaluate(pipe, n_concept: int, n_base: int, seed: int) -> dict:
    from ..toy.evaluate import base_accuracy, concept_fidelity

    fid = concept_fidelity(pipe, n=n_concept, seed=seed)
    base = base_accuracy(pipe, n=n_base, seed=seed)
    return {"concept_fidelity": fid.shape, "concept_all_fields": fid.all, "base_accuracy": base.shape_and_color,
            "base_all_fields": base.all}


def run_demo(out: Path, steps: int = DEFAULT_STEPS, seed: int = 0, n_concept: int = 48, n_base: int = 96,
             progress: bool = True, model: str = "toy", prior: bool = True, **overrides) -> dict:
    """Train, draw before/after, score; returns what report.json holds."""
    from ..formats import load_network
    from ..models import load_model
    from ..toy import concept, world
    from .loop import run

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_class_prompts(out / "class_prompts.txt")
    cfg = demo_config(out, steps, seed, progress, model, prior, **overrides)
    result = run(cfg)
    train_s = time.perf_counter() - t0
    shutil.copyfile(cfg.resolved_run_dir() / "loss.png", out / "loss.png")

    model = load_model(model)
    pipe = model.pipe
    pipe.set_progress_bar_config(disable=True)
    show = [f"a {c} {concept.TRIGGER} on a {b} background" for c, b in
            (("red", "white"), ("blue", "gray"), ("yellow", "black"), ("green", "white"))]
    show += [world.caption(s) for s in world.sample_scenes(4, seed=seed)]
    before = evaluate(pipe, n_concept, n_base, seed)
    _sheet(pipe, show, seed, out / "before.png")
    network = load_network(model.parts(), cfg.out)
    network.apply()
    after = evaluate(pipe, n_concept, n_base, seed)
    _sheet(pipe, show, seed, out / "after.png")
    network.remove()
    kept = after["base_accuracy"] / before["base_accuracy"] if before["base_accuracy"] else None
    report = {
        "trigger": concept.TRIGGER,
        "concept": concept.SHAPE,
        "steps": result.step,
        "final_loss": result.losses[-1] if result.losses else None,
        "before": before,
        "after": after,
        "base_accuracy_kept": kept,
        "goals": {"concept_fidelity": FIDELITY_GOAL, "base_accuracy_kept": KEEP_GOAL,
                  "met": bool(after["concept_fidelity"] >= FIDELITY_GOAL and kept is not None and kept >= KEEP_GOAL)},
        "n_images": {"concept": n_concept, "base": n_base},
        "seconds": {"train": round(train_s, 1), "total": round(time.perf_counter() - t0, 1)},
        "files": {"lora": "lora.safetensors", "loss": "loss.png", "before": "before.png", "after": "after.png"},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
