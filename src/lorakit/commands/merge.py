"""`lorakit merge`: LoRAs into a checkpoint (with --model) or LoRAs into one LoRA (without)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .options import ALLOW_PICKLE, TEXT_ENCODERS


def merge(
    lora: List[str] = typer.Option(..., "--lora", "-l", help="FILE[:WEIGHT], repeatable"),
    out: Path = typer.Option(..., "--out", "-o", help="folder → diffusers layout; .safetensors → single file"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="bake the LoRAs into this checkpoint"),
    rank: Optional[int] = typer.Option(None, "--rank", help="LoRA+LoRA: project the result to this rank"),
    dtype: str = typer.Option("fp16", "--dtype", help="save dtype: fp16, bf16 or fp32"),
    prediction_type: Optional[str] = typer.Option(None, "--prediction-type"),
    allow_pickle: bool = ALLOW_PICKLE,
    text_encoders: Optional[Path] = TEXT_ENCODERS,
) -> None:
    """Merge LoRAs into a base model, or combine LoRAs into one LoRA file."""
    from ..devices import parse_dtype

    save_dtype = parse_dtype(dtype)
    if model is None:
        from .algebra import merge_loras_cli

        merge_loras_cli(lora, out, rank=rank, dtype=dtype, allow_pickle=allow_pickle)
        return
    if rank is not None:
        from ..errors import LoraKitError

        raise LoraKitError("--rank applies to LoRA+LoRA merges; a checkpoint merge keeps the full update")
    from ..ops.checkpoint_merge import merge_into_checkpoint

    written = merge_into_checkpoint(model, [x for x in lora], out, dtype=save_dtype, prediction_type=prediction_type,
                                    text_encoders=text_encoders, allow_pickle=allow_pickle)
    typer.echo(str(written))
