"""`lorakit check`: will each tool load this LoRA the way lorakit means it (lorakit.check)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .options import FAMILY


def check(
    file: Path = typer.Argument(..., help="LoRA file (.safetensors)"),
    family: Optional[str] = FAMILY,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="the base model to check against (a diffusers "
                                        "folder, a single file, toy; default: the family's base, from the "
                                        "shipped configs); only its configs and header are read"),
    fix: bool = typer.Option(False, "--fix", help="write the file in the layout that --for's tool applies fully"),
    target: Optional[str] = typer.Option(None, "--for", help="with --fix: comfyui, a1111, diffusers or kohya"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="with --fix: the file to write"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """How many of the file's modules ComfyUI, Forge, A1111, diffusers, kohya sd-scripts and
    musubi-tuner apply, the keys each skips and why, and whether at the strength lorakit means.
    Exit code 0 when every tool applies every module as meant, 1 otherwise."""
    from ..errors import LoraKitError

    if fix or target or out:
        if not (fix and target and out):
            raise LoraKitError("--fix needs --for TOOL and --out FILE")
        from ..check.fix import fix as fix_file

        report = fix_file(file, target, out, family)
        typer.echo(f"{out}: {report.results[0].line()}")
        return
    from ..check import check as check_file

    report = check_file(file, family, base=model)
    if as_json:
        typer.echo(json.dumps({"path": report.path, "family": report.family, "modules": report.modules,
                               "ok": report.ok, "tools": [dict(vars(r), ok=r.ok) for r in report.results]},
                              indent=2))
    else:
        typer.echo(report.text())
    raise SystemExit(0 if report.ok else 1)
