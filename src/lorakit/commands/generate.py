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
    blocks_to_swap: int = typer.Option(0, "--blocks-to-swap", help="CUDA: keep N transformer blocks in CPU "
                                       "memory, each copied to the GPU just before use"),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="fit in this much memory (e.g. "
                                                "12GB): the cheapest base format and block swap that fit"),
    plan: bool = typer.Option(False, "--plan", help="print the estimated peak memory, part by part, and exit "
                              "(reads configs and file headers, no weights)"),
) -> None:
    """Generate images with one or several LoRAs at chosen strengths."""
    from ..devices import load_model_for_inference
    from ..generate import generate as run, parse_lora_arg, write_outputs

    from ..writable import require_writable

    if blocks_to_swap:
        from ..block_swap import check_model
        from ..models.sketch import sketch

        check_model(blocks_to_swap, sketch(model, text_encoders=text_encoders, allow_pickle=allow_pickle))
    if plan or memory_budget is not None:
        base_precision, blocks_to_swap = _plan(model, device, dtype, base_precision, blocks_to_swap, memory_budget,
                                               plan, width, height, n, guidance, prediction_type, text_encoders,
                                               allow_pickle)
        if plan:
            return
    require_writable(out, folder=out.suffix.lower() != ".png")
    from ..heap_trim import map_large_blocks

    map_large_blocks()
    def load(components):
        return load_model_for_inference(model, device, dtype, base_precision, prediction_type=prediction_type,
                                        text_encoders=text_encoders, allow_pickle=allow_pickle,
                                        components=components)

    # in stages: the prompts are encoded and big text encoders (T5-XXL) released before the denoiser loads
    base = load(("vae", "text_encoders"))

    def add_denoiser():
        base.pipe.register_modules(**{base.spec.denoiser: load(("unet",)).unet})
        if blocks_to_swap:
            from .. import block_swap

            block_swap.apply(base.unet, blocks_to_swap, base.unet.device)

    result = run(base, prompt, negative=negative, loras=[parse_lora_arg(x) for x in lora], n=n, steps=steps,
                 guidance=guidance, seed=seed, width=width, height=height, sampler=sampler, merge=not on_the_fly,
                 lora_dir=lora_dir, allow_pickle=allow_pickle, add_denoiser=add_denoiser)
    for path in write_outputs(result, out):
        typer.echo(str(path))


def _plan(model, device, dtype, base_precision, blocks_to_swap, memory_budget, plan, width, height, n, guidance,
          prediction_type, text_encoders, allow_pickle) -> tuple[str, int]:
    """Print the plan (`--plan`) and/or fit `--memory-budget`: the base precision and block swap to use."""
    from ..memory_budget import budget_generate, default_device, parse_size
    from ..memory_plan import Settings, generate_plan
    from ..models.sketch import sketch
    from ..quantized import normalise

    sk = sketch(model, text_encoders=text_encoders, allow_pickle=allow_pickle, prediction_type=prediction_type)
    side = max(width or 0, height or 0) or sk.family.resolution(False)
    fmt = normalise(base_precision)
    settings = Settings(device=default_device(device), base_precision=fmt, resolution=side, n=n, guidance=guidance,
                        blocks_to_swap=blocks_to_swap, mixed_precision=normalise(dtype))
    if memory_budget is not None:
        settings = budget_generate(sk, settings, parse_size(memory_budget),
                                   echo=lambda line: typer.echo(line, err=not plan))
    if plan:
        typer.echo(generate_plan(sk, settings).table())
    chosen = settings.base_precision if settings.base_precision != fmt else base_precision
    return chosen, settings.blocks_to_swap

