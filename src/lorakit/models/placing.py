"""Tensors read from a file put into a model built on the `meta` device, already in the target
format: the plain dtype, or, for the Linear weights that suit it, fp8/int8/nf4 (quantized.py).

Streamed loaders read a group of tensors (a block) at a time and hand it here, so no full-precision
copy of the model ever exists. A file's float8_e4m3fn tensors (ComfyUI's and Kijai's fp8 files,
with ComfyUI's per-layer `scale_weight`) go into an fp8 base as they are, data and scale, with no
upcast; any other target gets data × scale, one tensor at a time. A GGUF file's quantized weights
(diffusers' `GGUFParameter`) stay as they are under auto, in diffusers' `GGUFLinear` (which
dequantizes a layer when it runs); any other target dequantizes them as they are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import quantized
from ..heap_trim import release_free_memory

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_DTYPES = tuple(d for d in (FP8, getattr(torch, "float8_e5m2", None)) if d is not None)


@dataclass(frozen=True)
class Target:
    """fmt: fp8/int8/nf4 for the Linear weights that suit it, gguf to keep a GGUF file's quantized
    weights, None for a plain model; dtype: the plain tensors' dtype, and the compute dtype of the
    quantized layers."""

    fmt: str | None
    dtype: torch.dtype


def target(base_precision: str | None, dtype: torch.dtype, *, fp8_file: bool = False,
           gguf_file: bool = False) -> Target:
    """What `base_precision` asks for. auto: `dtype`, except that a file of fp8 weights stays fp8
    (where torchao can hold it; otherwise it is dequantized) and a GGUF file keeps its quantization."""
    name = quantized.normalise(base_precision or "auto")
    if name == "auto":
        if gguf_file:
            return Target("gguf", dtype)
        if fp8_file and fp8_available():
            return Target("fp8", dtype)
        return Target(None, dtype)
    if name in quantized.PLAIN_DTYPES:
        return Target(None, quantized.PLAIN_DTYPES[name])
    quantized.require(name)
    return Target(name, dtype)


def fp8_available() -> bool:
    from ..errors import LoraKitError

    try:
        quantized.require("fp8")
    except LoraKitError:
        return False
    return True


def is_fp8(t: Tensor) -> bool:
    return t.dtype in FP8_DTYPES


def is_gguf(t: Tensor) -> bool:
    return getattr(t, "quant_type", None) is not None


def dequantized(t: Tensor, scale: Tensor | None) -> Tensor:
    """A file tensor as plain numbers: fp8 data × its scale (per tensor or per row) in fp32, GGUF
    blocks through diffusers' dequantization."""
    if is_gguf(t):
        return quantized.dequantize(t, torch.float32)
    if not is_fp8(t):
        return t
    out = t.to(torch.float32)
    if scale is None:
        return out
    s = scale.to(torch.float32)
    if s.numel() > 1:
        s = s.reshape(-1, *([1] * (out.dim() - 1)))
    return out * s


def apply_scales(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A whole part's state (a text encoder in an SD 3.5 fp8 file) with ComfyUI's scaled fp8 weights
    as data × `scale_weight` in fp32 and the scale keys dropped; plain fp8 weights are left as they
    are (a cast reads them right)."""
    out = {k: v for k, v in state.items() if not k.endswith((".scale_weight", ".scale_input"))}
    for k, v in state.items():
        if k.endswith(".scale_weight"):
            weight = k[:-len(".scale_weight")] + ".weight"
            if weight in out and is_fp8(out[weight]):
                out[weight] = dequantized(out[weight], v)
    return out


def still_meta(model: nn.Module) -> list[str]:
    """The parameters and buffers a streamed load left on `meta`: what the files did not cover."""
    return [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]


def place(model: nn.Module, state: dict[str, Tensor], to: Target,
          scales: dict[str, Tensor] | None = None) -> list[str]:
    """Put `state` (names of `model`'s state dict) into `model` in the format `to` asks for; `scales`:
    the per-tensor or per-row scale of fp8 tensors. `state` is emptied as it goes, so that a read
    tensor is freed once it is in (a quantized model's peak: itself plus what is left of one group).
    Returns the names `model` does not have; a ValueError for a tensor of another shape."""
    scales = scales or {}
    unknown = []
    for key in list(state):
        t = state.pop(key)
        path, _, leaf = key.rpartition(".")
        try:
            module = model.get_submodule(path) if path else model
        except AttributeError:
            module = None
        own = None if module is None else module._parameters.get(leaf, module._buffers.get(leaf))
        if own is None:
            unknown.append(key)
            continue
        shape = tuple(getattr(t, "quant_shape", t.shape))
        if shape != tuple(own.shape):
            raise ValueError(f"tensor {key} has shape {shape}, the model expects {tuple(own.shape)}")
        linear_weight = leaf == "weight" and isinstance(module, nn.Linear)
        if to.fmt == "gguf" and is_gguf(t) and linear_weight:
            _gguf_linear(model, path, module, to.dtype).weight = t
            continue
        if to.fmt == "fp8" and t.dtype == FP8 and linear_weight and quantized.quantizable(t, "fp8"):
            quantized.hold(module, quantized.from_fp8(t, scales.get(key), to.dtype))
            continue
        t = dequantized(t, scales.get(key))
        if to.fmt in quantized.QUANTIZED and linear_weight and quantized.quantizable(t, to.fmt):
            quantized.hold(module, quantized.quantize(t, to.fmt, to.dtype))
            continue
        t = t.to(to.dtype) if t.is_floating_point() else t
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(t, requires_grad=own.requires_grad)
        else:
            module._buffers[leaf] = t
    # the group's read tensors (and a quantization's temporaries) were freed between the weights kept:
    # glibc holds such holes in its heap, and over a whole model they added up (SD 3.5-large's fp8
    # load from a bf16 file: 3.9 GB resident and unused until the first training step trimmed it)
    release_free_memory()
    return unknown


def _gguf_linear(model: nn.Module, path: str, module: nn.Linear, dtype: torch.dtype) -> nn.Module:
    """The layer at `path` as diffusers' GGUFLinear computing in `dtype` (its bias kept, still to load
    when on meta), as diffusers' GGUF quantizer swaps it."""
    from accelerate import init_empty_weights
    from diffusers.quantizers.gguf.utils import GGUFLinear

    if isinstance(module, GGUFLinear):
        return module
    with init_empty_weights():
        layer = GGUFLinear(module.in_features, module.out_features, module.bias is not None, compute_dtype=dtype)
    if module.bias is not None:
        layer.bias = module.bias
    layer.source_cls = type(module)
    layer.requires_grad_(False)
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, layer)
    return layer
