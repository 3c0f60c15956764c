"""`lorakit generate`: text to image with LoRAs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .options import ALLOW_PICKLE, BASE_PRECISION, TEXT_ENCODERS


def generate(
    model: str = typer.Option(..., "--model", "-m", help="diffusers folder, .safetensors checkpoint, hub id or 'toy'"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="prompt; A1111's <lora:name:0.8> tags are honoured"),
    lora: List[str] = typer.Option([], "--lora", "-l", help="FILE[:WEIGHT], repeatable"),
    negative: str = typer.Option("", "--negative", "-n", help="negative prompt"),
    n: int = typer.Option(1, "--n", help="number of images (seeds seed, seed+1, …); a grid is written when > 1"),
    steps: int = typer.Option(25, "--steps"),
    guidance: float = typer.Option(7.0, "--guidance", "--cfg"),
    seed: int = typer.Option(0, "--seed"),
    width: Optional[int] = typer.Option(None, "--width"),
    height: Optional[int] = typer.Option(None, "--height"),
    sampler: str = typer.Option("euler_a", "--sampler", help="euler_a, euler, ddim, dpm++2m, dpm++2m_karras, unipc, …"),
    lora_dir: Optional[Path] = typer.Option(None, "--lora-dir", help="where <lora:name> tags are looked up"),
    on_the_fly: bool = typer.Option(False, "--on-the-fly", help="keep LoRAs unmerged: applied inside each layer, weights untouched"),
    out: Path = typer.Option(Path("outputs"), "--out", "-o", help="a .png file or a folder"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, mps"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on GPU; fp32 on CPU, where bf16 would blur a LoRA's "
                              "effect, bf16 only if fp32 weights would not fit in memory; with --base-precision: "
                              "its dtype, or what fp8/int8/nf4 compute in), fp16, bf16, fp32"),
    base_precision: str = BASE_PRECISION,
    prediction_type: Optional[str] = typer.Option(None, "--prediction-type", help="epsilon or v_prediction"),
    allow_pickle: bool = ALLOW_PICKLE,
    text_encoders: Optional[Path] = TEXT_ENCODERS,
) -> None:
    """Generate images with one or several LoRAs at chosen strengths."""
    from ..devices import load_model_for_inference
    from ..generate import generate as run, parse_lora_arg, write_outputs

    from ..writable import require_writable

    require_writable(out, folder=out.suffix.lower() != ".png")
    base = load_model_for_inference(model, device, dtype, base_precision, prediction_type=prediction_type,
                                    text_encoders=text_encoders, allow_pickle=allow_pickle)
    result = run(base, prompt, negative=negative, loras=[parse_lora_arg(x) for x in lora], n=n, steps=steps,
                 guidance=guidance, seed=seed, width=width, height=height, sampler=sampler, merge=not on_the_fly,
                 lora_dir=lora_dir, allow_pickle=allow_pickle)
    for path in write_outputs(result, out):
        typer.echo(str(path))
