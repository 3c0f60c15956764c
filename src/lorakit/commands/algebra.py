"""`lorakit resize`, `lorakit extract`, and the LoRA + LoRA half of `lorakit merge`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .options import ALLOW_PICKLE

DYNAMIC_HELP = "sv_ratio:X | sv_fro:X | sv_cumulative:X (kohya's rules; --rank then caps the rank)"


def _rank_lines(result, verbose: bool) -> None:
    from ..ops.algebra import resize_table

    rows = resize_table(result.infos)
    if verbose and rows:
        width = max(len(r[0]) for r in rows)
        typer.echo(f"{'module':{width}}  rank      Frobenius kept  Σσ kept  σ₁/σ_k")
        for name, old, new, fro, ssum, ratio in rows:
            typer.echo(f"{name:{width}}  {old:>3} → {new:<3}  {fro:>13.2%}  {ssum:>7.2%}  {ratio:>6.1f}")
    if rows:
        fro = [r[3] for r in rows]
        ranks = sorted({r[2] for r in rows})
        shown = ", ".join(map(str, ranks[:6])) + (" …" if len(ranks) > 6 else "")
        typer.echo(f"ranks kept: {shown}; Frobenius norm kept: mean {sum(fro) / len(fro):.2%}, "
                   f"min {min(fro):.2%}")


def resize(
    file: Path = typer.Argument(..., help="LoRA file to resize"),
    out: Path = typer.Option(..., "--out", "-o", help="output .safetensors"),
    rank: Optional[int] = typer.Option(None, "--rank", "-r", help="new rank (with --dynamic: the most allowed)"),
    dynamic: Optional[str] = typer.Option(None, "--dynamic", help=DYNAMIC_HELP),
    conv_rank: Optional[int] = typer.Option(None, "--conv-rank", help="new rank of kxk conv modules (default --rank)"),
    dtype: str = typer.Option("fp16", "--dtype", help="save dtype: fp16, bf16 or fp32"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="a line per module: rank, kept norm, σ ratio"),
    allow_pickle: bool = ALLOW_PICKLE,
) -> None:
    """Lower a LoRA's rank: the best approximation of each module's update, same strength."""
    from ..ops.algebra import resize as do_resize
    from ..devices import parse_dtype

    result = do_resize(file, rank, dynamic, conv_rank=conv_rank, out=out, dtype=parse_dtype(dtype),
                       allow_pickle=allow_pickle)
    _rank_lines(result, verbose)
    typer.echo(f"wrote {result.path} ({len(result.modules)} modules)")


def merge_loras_cli(loras: List[str], out: Path, rank: Optional[int] = None, dtype: str = "fp16", *,
                    dynamic: Optional[str] = None, conv_rank: Optional[int] = None, verbose: bool = False,
                    allow_pickle: bool = False) -> None:
    """`lorakit merge --lora A:w --lora B:w --out F [--rank R]` without a --model."""
    from ..ops.algebra import merge_loras, parse_lora_specs
    from ..devices import parse_dtype

    result = merge_loras(parse_lora_specs(loras), rank, dynamic, conv_rank=conv_rank, out=out,
                         dtype=parse_dtype(dtype), allow_pickle=allow_pickle)
    if result.infos:
        _rank_lines(result, verbose)
    total = sorted(set(result.ranks().values()))
    typer.echo(f"wrote {result.path} ({len(result.modules)} modules, rank {', '.join(map(str, total[:6]))}"
               f"{' …' if len(total) > 6 else ''})")


def extract(
    base: str = typer.Option(..., "--base", help="base model: diffusers folder, .safetensors, hub id or toy"),
    tuned: str = typer.Option(..., "--tuned", help="fine-tuned model of the same architecture"),
    out: Path = typer.Option(..., "--out", "-o", help="output .safetensors"),
    rank: Optional[int] = typer.Option(None, "--rank", "-r", help="LoRA rank (with --dynamic: the most allowed)"),
    dynamic: Optional[str] = typer.Option(None, "--dynamic", help=DYNAMIC_HELP),
    conv_rank: Optional[int] = typer.Option(None, "--conv-rank", help="also extract ResNet/resampler convs, at this rank"),
    clamp_quantile: Optional[float] = typer.Option(None, "--clamp-quantile",
                                                   help="kohya's outlier clamp, e.g. 0.99 (default: none)"),
    min_diff: float = typer.Option(0.01, "--min-diff", help="text encoder extracted only if it changed more"),
    targets: Optional[str] = typer.Option(None, "--targets", help="attn | cross-attn | transformer | full"),
    dtype: str = typer.Option("fp16", "--dtype", help="save dtype: fp16, bf16 or fp32"),
    load_dtype: str = typer.Option("fp32", "--load-dtype", help="dtype the two models' weights are taken in"),
    config_dir: Optional[Path] = typer.Option(None, "--config-dir",
                                              help="diffusers config folder for single files of other sizes "
                                                   "than the shipped ones"),
    allow_pickle: bool = ALLOW_PICKLE,
) -> None:
    """Extract the LoRA whose merge best approximates tuned − base (single files and diffusers
    folders are read one layer at a time)."""
    from ..devices import parse_dtype
    from ..ops.extract import extract as do_extract

    result = do_extract(base, tuned, rank, dynamic, conv_rank=conv_rank, preset=targets,
                        clamp_quantile=clamp_quantile, min_diff=min_diff, out=out, dtype=parse_dtype(dtype),
                        load_dtype=parse_dtype(load_dtype), allow_pickle=allow_pickle, config_dir=config_dir)
    for line in result.report():
        typer.echo(line)
    typer.echo(f"wrote {result.path} ({len(result.modules)} modules)")
