"""`lorakit evaluate`: what a LoRA learned and what it broke, as a table, a report folder and a grid."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..evaluation.encoders import DEFAULT_CLIP, DEFAULT_DINO
from .options import ALLOW_PICKLE, BASE_PRECISION


def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="diffusers folder, .safetensors checkpoint, hub id or 'toy'"),
    lora: List[str] = typer.Option(..., "--lora", "-l", help="FILE[:WEIGHT], repeatable; strengths scale the weights"),
    prompt: List[str] = typer.Option([], "--prompt", "-p", help="a prompt, repeatable"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="text file, one prompt a line"),
    trigger: Optional[str] = typer.Option(None, "--trigger", help="prompts containing it are the LoRA's own; "
                                          "without --prompt/--prompts, it picks a default prompt set"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="the training images (folder or dataset TOML) "
                                        "for subject fidelity"),
    clip_model: str = typer.Option(DEFAULT_CLIP, "--clip-model", help="CLIP folder or hub id, read offline "
                                   "(none: skip)"),
    dino_model: str = typer.Option(DEFAULT_DINO, "--dino-model", help="DINOv2 (or DINO) folder or hub id, read "
                                   "offline (none: skip)"),
    class_word: Optional[str] = typer.Option(None, "--class-word", help="replaces the trigger in the text CLIP-T "
                                             "scores, e.g. 'dog' for 'sks dog'"),
    strengths: str = typer.Option("0,0.25,0.5,0.75,1", "--strengths", help="comma-separated; 0 is always added"),
    n: int = typer.Option(1, "--n", help="seeds per prompt (seed, seed+1, …)"),
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(20, "--steps"),
    guidance: float = typer.Option(7.0, "--guidance", "--cfg"),
    sampler: str = typer.Option("euler_a", "--sampler"),
    negative: str = typer.Option("", "--negative"),
    width: Optional[int] = typer.Option(None, "--width"),
    height: Optional[int] = typer.Option(None, "--height"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="report folder (report.json, report.html, "
                                       "grid.png); a .png path writes the grid alone"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    base_precision: str = BASE_PRECISION,
    allow_pickle: bool = ALLOW_PICKLE,
) -> None:
    """Draw the same prompts and seeds at several LoRA strengths and measure subject fidelity (DINO,
    CLIP-I against --data), prompt fidelity (CLIP-T), drift from the base (pixels, CLIP, DINO), the
    toy scorer's fidelity on the toy model; write a report folder with an HTML page and the grid."""
    from ..devices import load_model_for_inference
    from ..errors import LoraKitError
    from ..evaluation.run import evaluate as run
    from ..evaluation.files import write_report
    from ..evaluation.prompts import default_prompts
    from ..generate import parse_lora_arg, read_prompt_file, save_png

    try:
        levels = [float(x) for x in strengths.split(",") if x.strip()]
    except ValueError:
        raise LoraKitError(f"--strengths must be numbers separated by commas (got {strengths!r})") from None
    texts = list(prompt) + (read_prompt_file(prompts) if prompts else [])
    own = None
    specs = [parse_lora_arg(x) for x in lora]
    if data is not None and not data.exists():
        raise LoraKitError("training data (--data) does not exist", data)
    if out is not None:
        from ..writable import require_writable

        require_writable(out, folder=out.suffix.lower() != ".png")
    base = load_model_for_inference(model, device, dtype, base_precision, allow_pickle=allow_pickle)
    if not texts and trigger:
        texts, own = default_prompts(trigger, toy=getattr(base, "kind", None) == "toy")
    report = run(base, specs, texts, strengths=levels, trigger=trigger, n=n, seed=seed, steps=steps,
                 guidance=guidance, sampler=sampler, negative=negative, width=width, height=height, data=data,
                 clip_model=clip_model, dino_model=dino_model, class_word=class_word, own=own,
                 allow_pickle=allow_pickle)
    written = {}
    if out is not None:
        if out.suffix.lower() == ".png":
            save_png(report.grid(), out, None)
            written = {"grid": out}
        else:
            written = write_report(report, out)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        typer.echo(report.table())
        for kind, path in written.items():
            typer.echo(f"{kind}: {path}")
    if as_json and report.notes:
        for note in report.notes.values():
            print(f"note: {note}", file=sys.stderr)
