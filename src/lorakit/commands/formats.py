"""`lorakit inspect` and `lorakit convert`: thin wrappers over lorakit.formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .options import ALLOW_PICKLE, FAMILY


def _fmt_summary(s: dict) -> str:
    if not s["values"]:
        return "-"
    vals = ", ".join(f"{v:g}" for v in s["values"][:8]) + (" …" if len(s["values"]) > 8 else "")
    return vals


def _to_help() -> str:
    """Each layout and, where not every family writes it, the families that do (from the registry)."""
    from .. import families
    from ..formats import FORMATS

    out = []
    for fmt in FORMATS:
        writers = [f.label for f in families.all() if fmt in f.lora_formats]
        out.append(fmt if len(writers) == len(families.all()) else f"{fmt} ({'/'.join(writers)})")
    return ", ".join(out)


TO_HELP = _to_help()


def _undecided(candidates: list[str]) -> str:
    from ..formats.detect import describe

    if not candidates:
        return "unknown"
    return f"ambiguous: {describe(candidates)} (the file fits each alike; --family says which)"


def _table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=report["path"], show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("format", report["format"])
    t.add_row("family", report["family"] or _undecided(report["candidates"]))
    t.add_row("modules", f"{report['modules']}  (" + ", ".join(f"{k} {v}" for k, v in
                                                             sorted(report["parts"].items())) + ")")
    t.add_row("kinds", ", ".join(f"{k} {v}" for k, v in sorted(report["kinds"].items())))
    net = report["network"]
    if net["algo"]:
        t.add_row("network", net["algo"] + "".join(f"  {k}={v}" for k, v in sorted(net["args"].items())))
    t.add_row("ranks", _fmt_summary(report["ranks"]))
    t.add_row("alphas", _fmt_summary(report["alphas"]))
    t.add_row("conv modules (kxk)", str(report["conv_modules"]))
    t.add_row("dtype", str(report["dtype"]))
    t.add_row("size", f"{report['file_size'] / 1024:.1f} KiB")
    hashes = report["hashes"]
    for key, value in (hashes["computed"] or hashes["stored"]).items():
        ok = hashes["match"].get(key)
        mark = "" if ok is None else (" (stored: matches)" if ok else f" (stored {hashes['stored'][key]}: DIFFERS)")
        t.add_row(key, value + mark)
    console.print(t)
    if report["metadata"]:
        m = Table(title="metadata", show_header=True)
        m.add_column("key", style="bold")
        m.add_column("value", overflow="fold")
        for k, v in sorted(report["metadata"].items()):
            m.add_row(k, v if len(v) <= 300 else v[:300] + f" … ({len(v)} chars)")
        console.print(m)


def inspect(
    file: Path = typer.Argument(..., help="LoRA file (.safetensors) or PEFT adapter folder"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    family: Optional[str] = FAMILY,
    allow_pickle: bool = ALLOW_PICKLE,
) -> None:
    """Show what a LoRA file holds: family, format, modules, ranks, alphas, metadata, hashes."""
    from ..formats import inspect_lora

    report = inspect_lora(file, family, allow_pickle=allow_pickle)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _table(report)


def convert(
    file: Path = typer.Argument(..., help="LoRA file or PEFT adapter folder"),
    to: str = typer.Option(..., "--to", help=TO_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="output file (a folder for peft)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp16, bf16 or fp32 (default: keep)"),
    family: Optional[str] = FAMILY,
    allow_pickle: bool = ALLOW_PICKLE,
) -> None:
    """Convert a LoRA between file layouts (--to lists them, and which families write each)."""
    from ..devices import parse_dtype
    from ..errors import LoraKitError
    from ..formats import FORMATS, load_lora, save_lora

    if to not in FORMATS:
        raise LoraKitError(f"--to {to!r}: choose from {', '.join(FORMATS)}")
    from ..writable import require_writable

    require_writable(out, folder=to == "peft")
    lf = load_lora(file, family, allow_pickle=allow_pickle)
    if Path(out).resolve() == Path(file).resolve():
        raise LoraKitError("output would overwrite the input; choose another --out", out)
    written = save_lora(out, lf, format=to, dtype=None if dtype is None else parse_dtype(dtype))
    typer.echo(f"{written}: {len(lf)} modules, {lf.format} → {to}")
    if Path(written).is_file():  # a PEFT adapter folder is for PEFT itself
        from ..check import summary

        for line in summary(written, lf.family):
            typer.echo(line)
