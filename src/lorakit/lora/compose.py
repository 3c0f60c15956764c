"""Adapters applied to one layer one after another, in the order they were merged or attached.

Most adapters add a ΔW that does not depend on the weight, so their order does not matter. DoRA's
does: it rescales W + ΔW to the magnitudes its file holds (functional.dora_delta), W being the
weight it lands on, the earlier adapters' ΔW included, as ComfyUI and Forge patch a weight one
patch after another. On a layer the file names once and the model holds as pieces (SD 3.x/Flux
fused `qkv`, `linear1`), that weight is the whole named layer gathered from its pieces, so a DoRA
norm that runs across rows sees every row.

Merging (network.py) and the on-the-fly effective weight (live.py) both come here, so they agree.

A layer whose weight is stored in fp8, int8 or nf4 (--base-precision) is merged as dequantized W + ΔW
in fp32, kept in the layer's compute precision: requantizing would round the LoRA's ΔW away into
the quantization error without saying so. Unmerging gives the quantized weight itself back.
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import quantized
from .modules import LoRAModule

_SAID: set[tuple[str, torch.dtype]] = set()  # (format, compute dtype) already said, once per process

Site = tuple[nn.Module, Tensor | None]  # (live layer, rows of the named layer it holds, or None for all)


def depends_on_weight(adapter: nn.Module) -> bool:
    return bool(getattr(adapter, "depends_on_weight", False))


def gather(sites: Sequence[Site], weights: Sequence[Tensor]) -> Tensor:
    """The named layer's weight from its pieces' weights (one per site, in order)."""
    rows = sites[0][1]
    if rows is None:
        return weights[0]
    total = sum(len(r) for _, r in sites)
    first = weights[0]
    out = torch.empty((total, *first.shape[1:]), dtype=first.dtype, device=first.device)
    for (_, r), w in zip(sites, weights):
        out[r.to(out.device)] = w
    return out


def site_delta(adapter: nn.Module, rows: Tensor | None, layer_weight: Tensor | None = None) -> Tensor:
    """ΔW (fp32, without the multiplier) on one site: the adapter's, or its rows for one piece.
    `layer_weight`: the named layer's weight it lands on, for an adapter whose ΔW depends on it."""
    delta = adapter.delta_weight(layer_weight)
    return delta if rows is None else delta[rows.to(delta.device)]


def add_site_delta(weight: Tensor, adapter: nn.Module, rows: Tensor | None, multiplier: float,
                   layer_weight: Tensor | None = None) -> Tensor:
    """weight (fp32) += m·ΔW of one site, in place and returned: a LoRA as one GEMM into the weight
    (no ΔW temporary), any other kind through its full ΔW."""
    if isinstance(adapter, LoRAModule):
        adapter.add_delta_to(weight, multiplier, rows)
    else:
        weight.add_(site_delta(adapter, rows, layer_weight).to(weight.device), alpha=multiplier)
    return weight


@torch.no_grad()
def merge_into(sites: Sequence[Site], adapter: nn.Module, multiplier: float) -> None:
    """Every piece's weight += m·ΔW in fp32, rounded once to the weight's dtype; a weight-dependent
    ΔW is computed from the pieces' weights as they are before this adapter. A quantized weight is
    replaced by its dequantized W + m·ΔW in its compute precision (the caller keeps the original)."""
    layer = None
    if depends_on_weight(adapter):
        layer = gather(sites, [quantized.dequantize(module.weight, torch.float32) for module, _ in sites])
    for module, rows in sites:
        w = module.weight
        if quantized.is_quantized(w):
            merged = add_site_delta(quantized.plain_copy(w, torch.float32), adapter, rows, multiplier, layer)
            module.weight = nn.Parameter(merged.to(w.dtype), requires_grad=w.requires_grad)
            _say_dequantized(quantized.format_of(w), w.dtype)
        elif w.dtype == torch.float32:
            add_site_delta(w, adapter, rows, multiplier, layer)
        else:
            w.copy_(add_site_delta(w.float(), adapter, rows, multiplier, layer))


def _say_dequantized(fmt: str, dtype: torch.dtype) -> None:
    if (fmt, dtype) in _SAID:
        return
    _SAID.add((fmt, dtype))
    name = quantized.format_of(torch.empty((), dtype=dtype))
    print(f"merging into {fmt} weights: the merged layers are kept dequantized in {name} (W + ΔW, not "
          f"requantized); unmerging gives the {fmt} weights back", file=sys.stderr, flush=True)
