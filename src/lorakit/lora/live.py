"""Adapters on the fly: how a layer with live adapters computes its output, call by call.

A layer's base weight is never touched on the fly; each call picks the cheaper of two exact ways:
- branch: W·x + Σ m·up(down(x)), what training needs (gradients reach the LoRA factors, kohya's
  dropouts apply). Its cost grows with the tokens: every branch re-reads x and adds a d-wide output
  in another pass, and thin rank-r GEMMs run far below the machine's peak. On SD 1.5 at 512 px,
  branches on every attention layer made an image 1.20× slower than merged weights;
- effective weight: (W + Σ m·ΔW)·x, ΔW built per call from the factors (one rank-r GEMM of the
  weight's size, in fp32 as `merge` does it). Its cost is the weight's size, whatever the tokens.
  DoRA/LoHa/LoKr adapters always build their full ΔW, so for them it always pays.
Both apply a layer's adapters one after another in the order they were attached, as merging
does (compose.py): a DoRA's ΔW is computed from the weight with the earlier adapters' ΔW in it.

Written by hand because neither PEFT nor diffusers chooses per call: PEFT always runs branches,
diffusers' `fuse_lora` and ComfyUI's weight patching change the weights for the whole run.
The forward is replaced per instance (as kohya's LoRA does), not hooked, because a forward hook
runs after the base layer has computed W·x, which the effective-weight path must not do.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import quantized
from . import compose
from .modules import LoRAModule

# The effective weight pays where the branches' work, ~tokens·r·(d + k), exceeds building and reading
# W + ΔW, ~d·k·r plus a few passes over W; measured here (bf16, rank 32, SD 1.5 shapes) it won from
# 2 048 tokens on 640×640 layers and lost at 512 tokens on 1280×1280 ones, where the rule below flips.
WEIGHT_SPACE_FACTOR = 2.0


class _Live:
    """What one layer runs on the fly: its adapters in order, and the forward it had before."""

    def __init__(self, module: nn.Module):
        # (owner id, adapter, rows of its named layer this layer holds, every (layer, rows) of that named layer)
        self.entries: list[tuple[int, nn.Module, Tensor | None, list]] = []
        self.previous = module.__dict__.get("forward")  # someone else's per-instance forward, kept


def attach(module: nn.Module, owner: int, adapter: nn.Module, rows: Tensor | None, sites: list) -> None:
    live = module.__dict__.get("_lorakit_live")
    if live is None:
        live = _Live(module)
        module._lorakit_live = live
        module.forward = types.MethodType(_live_forward, module)
    live.entries.append((owner, adapter, rows, sites))


def detach(module: nn.Module, owner: int) -> None:
    live = module.__dict__.get("_lorakit_live")
    if live is None:
        return
    live.entries = [e for e in live.entries if e[0] != owner]
    if not live.entries:
        del module._lorakit_live
        if live.previous is not None:
            module.forward = live.previous
        else:
            del module.forward


def _live_forward(module: nn.Module, x: Tensor, *args, **kwargs) -> Tensor:
    live: _Live = module._lorakit_live
    if not args and not kwargs and _weight_space_pays(module, x, live):
        weight = effective_weight(module, live.entries)
        if isinstance(module, nn.Linear):
            return F.linear(x, weight, module.bias)
        return module._conv_forward(x, weight, module.bias)
    if live.previous is not None:
        out = live.previous(x, *args, **kwargs)
    else:
        out = type(module).forward(module, x, *args, **kwargs)
    for entry in live.entries:
        _, adapter, rows, sites = entry
        if not isinstance(adapter, LoRAModule):
            out = out + _delta_branch(module, x, live.entries, entry)
        else:
            out = out + (adapter(x) if rows is None else adapter.forward_rows(x, rows, len(sites)))
    return out


def _delta_branch(module: nn.Module, x: Tensor, entries: list, entry: tuple) -> Tensor:
    """x·(m·ΔW)ᵀ of one adapter beside the layer's output. An adapter read from a file: its ΔW, no
    gradient. A trainable one (lycoris_adapter.py): ΔW with its gradient, built once per call of the
    named layer (the pieces of a fused layer share it and its dropout draws), its dropouts applied."""
    adapter, rows, sites = entry[1], entry[2], entry[3]
    call_delta = getattr(adapter, "call_delta", None)
    if call_delta is None:
        return _delta_forward(module, x, _entry_delta(module, entries, entry))

    def layer_weight() -> Tensor | None:
        if not compose.depends_on_weight(adapter):
            return None
        with torch.no_grad():
            return _layer_weight(module, _weight_before(module, entries, adapter), entry)

    delta = call_delta(x, len(sites), layer_weight)
    if delta is None:  # module dropout
        return torch.zeros((), dtype=x.dtype, device=x.device)
    if rows is not None:
        delta = delta[rows.to(delta.device)]
    return adapter.drop(_delta_forward(module, x, delta * adapter.multiplier))


def _delta_forward(module: nn.Module, x: Tensor, delta: Tensor) -> Tensor:
    """x·ΔWᵀ (or the convolution by ΔW) beside the layer's own output, no bias."""
    delta = delta.to(x.dtype)
    if isinstance(module, nn.Linear):
        return F.linear(x, delta)
    return module._conv_forward(x, delta, None)


def _needs_branch(adapter: nn.Module) -> bool:
    """Training an adapter, or kohya's dropouts, need its branch (checked on every call: kept cheap)."""
    if isinstance(adapter, LoRAModule):
        if torch.is_grad_enabled() and (adapter.lora_down.weight.requires_grad or adapter.lora_up.weight.requires_grad):
            return True
        return adapter.training and bool(adapter.dropout or adapter.rank_dropout or adapter.module_dropout)
    return torch.is_grad_enabled() and any(p.requires_grad for p in adapter.parameters())


def _weight_space_pays(module: nn.Module, x: Tensor, live: _Live) -> bool:
    if live.previous is not None:  # e.g. an offloading wrapper that must run around the layer
        return False
    if quantized.is_quantized(module.weight):  # W_q·x + B·A·x: a merged copy would be a full-precision weight
        return False
    if any(_needs_branch(e[1]) for e in live.entries):
        return False
    if any(not isinstance(e[1], LoRAModule) for e in live.entries):
        return True  # its branch builds the full ΔW and runs a second GEMM of the base's size
    w = module.weight
    shape = quantized.logical_shape(w)
    d, k = shape[0], math.prod(shape[1:])
    if isinstance(module, nn.Linear):
        tokens = x.numel() // max(x.shape[-1], 1)
    else:
        stride = module.stride[0] * module.stride[1]
        tokens = x.numel() // max(x.shape[-3], 1) // stride
    return tokens * (d + k) >= WEIGHT_SPACE_FACTOR * d * k


@torch.no_grad()
def effective_weight(module: nn.Module, entries: list) -> Tensor:
    """W + Σ m·ΔW in the weight's dtype, computed in fp32 as `LoRANetwork.merge` computes it (so a
    LoRA on the fly draws what the same LoRA merged draws). An fp8/int8/nf4 weight gives W + ΔW in its
    compute precision, as merging into it does."""
    w = module.weight
    out = _weight_before(module, entries)
    return out if w.dtype == torch.float32 else out.to(w.dtype)


def _weight_before(module: nn.Module, entries: list, stop: nn.Module | None = None) -> Tensor:
    """The layer's weight (fp32) with the ΔW of its adapters before `stop` (all when None) added."""
    out = quantized.plain_copy(module.weight, torch.float32)
    for entry in entries:
        adapter, rows = entry[1], entry[2]
        if adapter is stop:
            break
        layer = _layer_weight(module, out, entry) if compose.depends_on_weight(adapter) else None
        compose.add_site_delta(out, adapter, rows, adapter.multiplier, layer)
    return out


def _layer_weight(module: nn.Module, current: Tensor, entry: tuple) -> Tensor:
    """The named layer's weight that the entry's adapter lands on: this layer's `current`, and each
    other piece of a fused layer with its own adapters before this one."""
    adapter, sites = entry[1], entry[3]
    return compose.gather(sites, [current if m is module else _weight_before(m, m._lorakit_live.entries, adapter)
                                  for m, _ in sites])


@torch.no_grad()
def _entry_delta(module: nn.Module, entries: list, entry: tuple) -> Tensor:
    """m·ΔW of one adapter on this layer, computed from the weight it lands on when weight-dependent."""
    adapter, rows = entry[1], entry[2]
    layer = None
    if compose.depends_on_weight(adapter):
        layer = _layer_weight(module, _weight_before(module, entries, adapter), entry)
    return compose.site_delta(adapter, rows, layer) * adapter.multiplier
