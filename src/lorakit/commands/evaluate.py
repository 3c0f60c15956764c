"""`lorakit evaluate`: a strength sweep of one or several LoRAs, as a table and a labelled grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .options import ALLOW_PICKLE


def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="diffusers folder, .safetensors checkpoint, hub id or 'toy'"),
    lora: List[str] = typer.Option(..., "--lora", "-l", help="FILE[:WEIGHT], repeatable; strengths scale the weights"),
    prompt: List[str] = typer.Option([], "--prompt", "-p", help="a prompt, repeatable"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="text file, one prompt a line"),
    trigger: Optional[str] = typer.Option(None, "--trigger", help="prompts containing it are the LoRA's own"),
    strengths: str = typer.Option("0,0.25,0.5,0.75,1", "--strengths", help="comma-separated; 0 is always added"),
    n: int = typer.Option(1, "--n", help="seeds per prompt (seed, seed+1, …)"),
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(20, "--steps"),
    guidance: float = typer.Option(7.0, "--guidance", "--cfg"),
    sampler: str = typer.Option("euler_a", "--sampler"),
    negative: str = typer.Option("", "--negative"),
    width: Optional[int] = typer.Option(None, "--width"),
    height: Optional[int] = typer.Option(None, "--height"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the strength × prompt grid (PNG)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    allow_pickle: bool = ALLOW_PICKLE,
) -> None:
    """Draw the same prompts and seeds at several LoRA strengths: drift from the base per strength,
    the toy scorer's fidelity on the toy model, and a labelled grid."""
    from ..devices import resolve_device_dtype
    from ..errors import LoraKitError
    from ..evaluate import evaluate as run
    from ..generate import parse_lora_arg, read_prompt_file, save_png
    from ..models import load_model

    try:
        levels = [float(x) for x in strengths.split(",") if x.strip()]
    except ValueError:
        raise LoraKitError(f"--strengths must be numbers separated by commas (got {strengths!r})") from None
    texts = list(prompt) + (read_prompt_file(prompts) if prompts else [])
    specs = [parse_lora_arg(x) for x in lora]
    if out is not None:
        from ..writable import require_writable

        require_writable(out)
    dev, dt = resolve_device_dtype(device, dtype)
    base = load_model(model, dtype=dt, device=dev, allow_pickle=allow_pickle)
    report = run(base, specs, texts, strengths=levels, trigger=trigger, n=n, seed=seed, steps=steps,
                 guidance=guidance, sampler=sampler, negative=negative, width=width, height=height,
                 allow_pickle=allow_pickle)
    if out is not None:
        save_png(report.grid(), out, None)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        typer.echo(report.table())
        if out is not None:
            typer.echo(f"grid: {out}")
