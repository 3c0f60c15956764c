"""The frozen base in the format `--base-precision` asks: the denoiser and the family's big text
encoders (`Family.big_text_encoders`: T5-XXL) in fp32, bf16 or fp16, or their Linear weights stored
in fp8, int8 or nf4 (quantized.py) and computed in a half format; the small parts (VAE, CLIP) stay
in the load's own dtype.

Applied after the family's loader built the pipeline: a loader that already read the weights into
the target format leaves nothing to do here (quantize_linears skips quantized weights). `auto`
changes nothing: the format the run's precision picks (precision.py), as before this option.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .. import quantized

CHOICES = ("auto",) + quantized.FORMATS
HELP = ("storage of the frozen denoiser and big text encoders (T5): auto (the precision the run picks), fp32, bf16, "
        "fp16, or fp8/int8/nf4 (Linear weights quantized through torchao, computed in bf16, fp16 on GPUs "
        "without bf16; the LoRA stays in fp32/mixed precision)")


def parse(name: str | None) -> str:
    """auto or one of quantized.FORMATS (aliases accepted); a one-line error for anything else."""
    return "auto" if name is None else quantized.normalise(name)


def compute_dtype(fmt: str, device, run_dtype: torch.dtype) -> torch.dtype:
    """The dtype the base computes in: a plain format's own; for fp8/int8/nf4 the run's dtype where it
    is a half format (the mixed precision asked or picked), else the device's half format
    (quantized.compute_dtype); auto: the run's dtype."""
    if fmt in quantized.PLAIN_DTYPES:
        return quantized.PLAIN_DTYPES[fmt]
    if fmt in quantized.QUANTIZED:
        return run_dtype if run_dtype in (torch.bfloat16, torch.float16) else quantized.compute_dtype(device)
    return run_dtype


def big_parts(model, components=("unet", "text_encoders")) -> dict[str, nn.Module]:
    """{pipeline attribute: module} of the parts the base precision applies to that this load holds."""
    spec, pipe = model.spec, model.pipe
    names = ([spec.denoiser] if "unet" in components else []) + \
            (list(spec.big_text_encoders) if "text_encoders" in components else [])
    return {n: getattr(pipe, n) for n in names if isinstance(getattr(pipe, n, None), nn.Module)}


@torch.no_grad()
def apply(model, fmt: str, dtype: torch.dtype, components=("unet", "text_encoders")) -> dict[str, int]:
    """The denoiser and big text encoders of `model` in `fmt`, computing in `dtype` (quantized formats);
    returns {part: Linear weights quantized} (empty for plain formats and auto)."""
    counts: dict[str, int] = {}
    if fmt == "auto":
        return counts
    for name, module in big_parts(model, components).items():
        if fmt in quantized.PLAIN_DTYPES:
            quantized.cast_plain(module, quantized.PLAIN_DTYPES[fmt])
            continue
        quantized.cast_plain(module, dtype)
        counts[name] = quantized.quantize_linears(module, fmt, dtype)
    return counts


def line(model, fmt: str, dtype: torch.dtype) -> str:
    """What the base holds, in one line: its format, what it computes in and the bytes it keeps."""
    parts = big_parts(model)
    stored = sum(quantized.stored_bytes(m) for m in parts.values())
    linears = [m for part in parts.values() for m in part.modules() if isinstance(m, nn.Linear)]
    held = sum(quantized.is_quantized(m.weight) for m in linears)
    computes = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    what = " and ".join(parts) or "base"
    if fmt in quantized.QUANTIZED:
        return (f"base precision: {fmt} ({what}: {held} of {len(linears)} Linear weights stored in {fmt}, computed "
                f"in {computes}; {_size(stored)})")
    return f"base precision: {fmt} ({what}: {_size(stored)})"


def _size(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def announce(model, fmt: str, dtype: torch.dtype, main: bool = True) -> None:
    if main and fmt != "auto":
        print(line(model, fmt, dtype), file=sys.stderr, flush=True)
