"""`lorakit toy …`: where the embedded toy base lives, and how to rebuild it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="The embedded toy world: a tiny Stable Diffusion base trained on drawn shapes.",
                  no_args_is_help=True)


@app.command("path")
def path() -> None:
    """Print the folder of the shipped toy base model (a diffusers StableDiffusionPipeline)."""
    from ..toy import base_path

    typer.echo(str(base_path()))


@app.command("build-base")
def build_base(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder to write (default: the shipped one)"),
    steps: int = typer.Option(8000, "--steps", help="UNet + text encoder training steps"),
    vae_steps: int = typer.Option(2000, "--vae-steps", help="VAE training steps"),
    vae_from: Optional[Path] = typer.Option(None, "--vae-from", help="reuse the VAE of this toy base folder"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch"),
    batch: int = typer.Option(64, "--batch"),
    images: int = typer.Option(20000, "--images", help="drawn scenes in the training set"),
    evaluate: bool = typer.Option(True, "--evaluate/--no-evaluate", help="score the result on every base prompt"),
) -> None:
    """Train the toy base from scratch (about an hour on one CPU core) and save it."""
    from ..errors import LoraKitError
    from ..toy import BASE_DIR
    from ..toy.build import build_base as build

    target = out or BASE_DIR
    if steps < 1 or vae_steps < 1:
        raise LoraKitError("--steps and --vae-steps must be at least 1")
    if target.exists() and not target.is_dir():
        raise LoraKitError("exists and is not a folder", target)
    if vae_from is not None and not (vae_from / "vae" / "config.json").is_file():
        raise LoraKitError("not a toy base folder (no vae/config.json)", vae_from)
    folder = build(target, steps=steps, vae_steps=vae_steps, seed=seed, batch=batch, threads=threads,
                   n_images=images, vae_from=vae_from, log=lambda m: typer.echo(m, err=True))
    if evaluate:
        from ..toy import load_folder
        from ..toy.evaluate import base_accuracy

        report = base_accuracy(load_folder(folder), n=96, seed=seed)
        typer.echo(f"base accuracy over {report.n} images: shape+colour {report.shape_and_color:.1%}, "
                   f"all fields {report.all:.1%}", err=True)
    typer.echo(str(folder))
