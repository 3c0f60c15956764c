"""`lorakit caption`: BLIP captions for a dataset folder."""

from __future__ import annotations

from pathlib import Path

import typer


def caption(
    folder: Path = typer.Argument(..., help="folder of images (searched recursively)"),
    prefix: str = typer.Option("", "--prefix", help="put before every caption, e.g. the trigger word"),
    ext: str = typer.Option(".txt", "--ext", help="caption file extension (.txt or .caption)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace captions that exist"),
    model: str = typer.Option("Salesforce/blip-image-captioning-large", "--model", help="BLIP folder or hub id"),
    batch_size: int = typer.Option(4, "--batch-size"),
    max_length: int = typer.Option(40, "--max-length"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Write a caption file next to every image that lacks one."""
    from ..caption import caption_folder
    from ..devices import resolve_device_dtype

    dev, _ = resolve_device_dtype(device, "fp32")
    written = caption_folder(folder, prefix=prefix, ext=ext, overwrite=overwrite, model=model,
                             batch_size=batch_size, max_length=max_length, device=dev)
    typer.echo(f"{len(written)} caption(s) written in {folder}")
