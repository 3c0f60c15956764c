"""`lorakit demo`: train a LoRA on the toy world's unseen concept and report what it learned."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..train.demo import DEFAULT_STEPS
from .options import BASE_PRECISION


def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="folder for lora.safetensors, loss.png, "
                             "before.png, after.png and report.json"),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", help="training steps"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch (the toy model is faster on one)"),
    base_precision: str = BASE_PRECISION,
    network: str = typer.Option("lora", "--network", help="adapter trained: lora, locon, loha, lokr, dora, oft "
                                "(each with the settings LyCORIS' guidelines give it)"),
    network_args: Optional[List[str]] = typer.Option(None, "--network-args", help="KEY=VALUE options, in place of "
                                                     "those settings' (as on train)"),
) -> None:
    """Teach the toy base a shape it has never seen (the real `train` path) and score it before/after."""
    import torch

    from ..errors import LoraKitError
    from ..train.demo import run_demo

    if steps < 1:
        raise LoraKitError("--steps must be at least 1")
    if threads >= 1:
        torch.set_num_threads(threads)
    from ..models.base_precision import parse
    from ..quantized import require

    fmt = parse(base_precision)
    require(fmt)
    extra = {"network_args": tuple(network_args)} if network_args else {}
    r = run_demo(out, steps=steps, seed=seed, base_precision=fmt, network=network, **extra)
    b, a = r["before"], r["after"]
    typer.echo(f"concept fidelity ({r['trigger']} → {r['concept']}): {b['concept_fidelity']:.0%} → "
               f"{a['concept_fidelity']:.0%} (goal ≥ {r['goals']['concept_fidelity']:.0%})")
    typer.echo(f"base accuracy: {b['base_accuracy']:.0%} → {a['base_accuracy']:.0%} "
               f"({r['base_accuracy_kept']:.0%} kept, goal ≥ {r['goals']['base_accuracy_kept']:.0%})")
    typer.echo(f"{r['seconds']['total']:.0f} s; files in {out}")
