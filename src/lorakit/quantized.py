"""Frozen base weights stored in fp8, int8 or nf4, computed in a half format layer by layer.

The quantized weight is a torchao tensor subclass in the layer's own `weight` slot: `F.linear`
dispatches on it, so the layer, lorakit's LoRA branch beside it (W_q·x + B·A·x, the branch in the
compute precision, its factors in fp32) and autograd all work unchanged, and autograd keeps the
quantized tensor (not a dequantized copy) for the backward pass.

Why torchao (0.18): it is PyTorch's own quantization library, maintained with PyTorch; the three
formats are plain-PyTorch tensor subclasses that run on CPU and CUDA alike (bitsandbytes' 4-bit and
8-bit layers replace the module and its CPU backend is newer; optimum-quanto is in maintenance);
fp8 weight-only is per-row scaled e4m3fn (sd-scripts' `--fp8_base` casts without a scale: this
keeps more of the numbers), int8 weight-only is per-row symmetric, nf4 is QLoRA's NormalFloat4 in
blocks of 64 with double-quantized scales (as bitsandbytes' and torchtune's). No kernels here.

Merging into such a layer dequantizes, merges in fp32 and keeps the result in the compute
precision (lora/compose.py): never a silent requantization.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import LoraKitError

FORMATS = ("fp32", "bf16", "fp16", "fp8", "int8", "nf4")
QUANTIZED = ("fp8", "int8", "nf4")
PLAIN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Stored bytes per weight, scales included (for the memory plan): fp8 and int8 one byte plus one
# fp32 scale per row (negligible for rows ≥ 1024 wide); nf4 half a byte plus, per block of 64, an
# int8 scale and, per 256 blocks, an fp32 scale of scales (QLoRA's double quantization).
BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0,
                    "nf4": 0.5 + 1 / 64 + 4 / (64 * 256)}

NF4_BLOCK, NF4_SCALER_BLOCK = 64, 256
# Linear weights smaller than this stay in the compute precision (nothing worth saving). Kept low so
# that the toy and the tiny test models are quantized as the real ones are.
MIN_QUANTIZED_WEIGHTS = 256


def _torchao():
    try:
        import torchao  # noqa: F401  (its import-time logging is quieted in lorakit/__init__.py)
    except ImportError as e:
        raise LoraKitError("base precision fp8/int8/nf4 needs torchao: pip install torchao (or install lorakit[train])"
                           ) from e
    return torchao


def normalise(name: str) -> str:
    name = str(name).lower()
    aliases = {"no": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float8": "fp8",
               "e4m3fn": "fp8", "float8_e4m3fn": "fp8", "qint8": "int8", "4bit": "nf4"}
    name = aliases.get(name, name)
    if name != "auto" and name not in FORMATS:
        raise LoraKitError(f"unknown base precision {name!r}: choose auto, {', '.join(FORMATS)}")
    return name


def require(fmt: str, device: str | torch.device = "cpu") -> None:
    """One clear line when this installation or device cannot hold a base in `fmt`."""
    if fmt not in QUANTIZED:
        return
    _torchao()
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise LoraKitError(f"base precision {fmt} runs on CPU and CUDA devices, not {kind}: use bf16 or fp16")
    if fmt == "fp8" and not hasattr(torch, "float8_e4m3fn"):
        raise LoraKitError("base precision fp8 needs torch ≥ 2.1 (float8_e4m3fn)")


def compute_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The half format a quantized layer computes in: bf16 where the device does bf16 arithmetic,
    fp16 on older GPUs, fp32 on a CPU without bf16 (the storage saving stays)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dev.type == "cpu":
        from .precision import cpu_bf16_kind

        return torch.bfloat16 if cpu_bf16_kind() else torch.float32
    return torch.float32


def is_gguf(t: Tensor | None) -> bool:
    """A GGUF file's quantized weight as diffusers holds it (GGUFParameter: raw blocks + quant type)."""
    return getattr(t, "quant_type", None) is not None


def logical_shape(t: Tensor) -> tuple[int, ...]:
    """A weight's shape in weights: a GGUF one holds bytes, one row of blocks per weight row, and
    keeps the shape it stands for in `quant_shape` (torchao's tensors report theirs as shape)."""
    return tuple(getattr(t, "quant_shape", t.shape))


def is_quantized(t: Tensor | None) -> bool:
    """A torchao quantized weight (any subclass of a tensor that is not a plain Parameter/Tensor), or a
    GGUF file's quantized weight."""
    if t is None:
        return False
    if is_gguf(t):
        return True
    data = t.data if isinstance(t, nn.Parameter) else t
    return type(data) not in (Tensor, nn.Parameter) and type(data).__module__.startswith("torchao")


def format_of(t: Tensor) -> str:
    """fp8, int8 or nf4 for a quantized weight, else the plain dtype's name."""
    if is_gguf(t):
        return "gguf-" + t.quant_type.name
    if is_quantized(t):
        name = type(t.data if isinstance(t, nn.Parameter) else t).__name__
        return {"Float8Tensor": "fp8", "Int8Tensor": "int8", "NF4Tensor": "nf4"}.get(name, name)
    return {v: k for k, v in PLAIN_DTYPES.items()}.get(t.dtype, str(t.dtype))


def quantizable(weight: Tensor, fmt: str) -> bool:
    """Whether a Linear weight of this shape goes into `fmt` (others stay in the compute precision)."""
    if weight.dim() != 2 or weight.numel() < MIN_QUANTIZED_WEIGHTS:
        return False
    if fmt == "nf4":
        return weight.numel() % NF4_BLOCK == 0
    return True


def nf4_scaler_block(numel: int) -> int:
    """Blocks sharing one double-quantized scale: QLoRA's 256 where the weight's blocks divide by it,
    else the largest power of two that divides them (narrow layers: a few more bytes of scales)."""
    blocks, size = numel // NF4_BLOCK, NF4_SCALER_BLOCK
    while blocks % size:
        size //= 2
    return size


@torch.no_grad()
def quantize(weight: Tensor, fmt: str, dtype: torch.dtype) -> Tensor:
    """`weight` (any float dtype, any device) as a quantized tensor computing in `dtype`."""
    _torchao()
    w = weight.detach().to(dtype)
    if fmt == "fp8":
        from torchao.quantization import Float8Tensor
        from torchao.quantization.granularity import PerRow

        return Float8Tensor.from_hp(w, granularity=PerRow())
    if fmt == "int8":
        from torchao.quantization.granularity import PerRow
        from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor

        return Int8Tensor.from_hp(w, PerRow())
    if fmt == "nf4":
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

        return to_nf4(w, NF4_BLOCK, nf4_scaler_block(w.numel()))
    raise ValueError(f"not a quantized format: {fmt}")


@torch.no_grad()
def from_fp8(data: Tensor, scale: Tensor | float | None, dtype: torch.dtype) -> Tensor:
    """An fp8 (e4m3fn) weight as a file stores it, with its scale (ComfyUI's `scale_weight`: one
    per tensor; None: 1), as a quantized tensor computing in `dtype`: no upcast of the data."""
    _torchao()
    if data.dtype != torch.float8_e4m3fn:
        raise LoraKitError(f"expected a float8_e4m3fn tensor, got {data.dtype}")
    from torchao.quantization import Float8Tensor

    rows = data.shape[0]
    s = torch.ones((), dtype=torch.float32) if scale is None else torch.as_tensor(scale, dtype=torch.float32)
    if s.numel() == 1:
        s = s.reshape(1).expand(rows).reshape(rows, 1).contiguous()
    else:
        s = s.reshape(rows, 1).to(torch.float32)
    return Float8Tensor(data, s.to(data.device), block_size=[1, data.shape[1]], dtype=dtype)


@torch.no_grad()
def dequantize(t: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The weight as a plain tensor in `dtype` (a plain weight is cast)."""
    if is_gguf(t):
        return _gguf_dequantize(t).to(dtype)
    data = t.data if isinstance(t, nn.Parameter) else t
    if not is_quantized(data):
        return data.to(dtype)
    if format_of(data) == "nf4":
        return data.get_original_weight().to(dtype)
    return data.dequantize(dtype)


def _gguf_dequantize(t: Tensor) -> Tensor:
    """A GGUF weight's numbers in fp32 through diffusers' block functions (its own
    `dequantize_gguf_tensor` multiplies Q8_0's scales in fp16, for speed)."""
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, dequantize_functions

    block, size = GGML_QUANT_SIZES[t.quant_type]
    raw = t.as_tensor().view(torch.uint8)
    shape = (*raw.shape[:-1], raw.shape[-1] // size * block)
    out = dequantize_functions[t.quant_type](raw.reshape(-1, size), block, size, dtype=torch.float32)
    return out.reshape(shape).to(torch.float32)


@torch.no_grad()
def with_compute_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """The same quantized weight computing in `dtype`: its stored data shared, never dequantized
    (through the subclass's own flatten/unflatten, whose metadata carries the compute dtype)."""
    data = t.data if isinstance(t, nn.Parameter) else t
    if data.dtype == dtype:
        return data
    names, meta = data.__tensor_flatten__()
    meta = dict(meta)
    if "tensor_meta" in meta:  # nf4: the dtype sits in its tensor_meta
        meta["tensor_meta"] = dataclasses.replace(meta["tensor_meta"], dtype=dtype)
    else:
        meta["dtype"] = dtype
    return type(data).__tensor_unflatten__({n: getattr(data, n) for n in names}, meta, data.size(), data.stride())


def plain_copy(t: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """A new plain tensor holding the weight in `dtype`, dequantized when quantized: safe to change in
    place (dequantize gives a plain weight itself back when it is already in `dtype`)."""
    data = t.data if isinstance(t, nn.Parameter) else t
    return dequantize(data, dtype) if is_quantized(data) else data.detach().to(dtype, copy=True)


def stored_bytes(module: nn.Module) -> int:
    """Bytes the module's parameters and buffers hold, quantized ones as stored."""
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        total += tensor_bytes(t)
    return total


def tensor_bytes(t: Tensor) -> int:
    if is_gguf(t):
        return t.numel() * t.element_size()  # the blocks as stored, scales included
    data = t.data if isinstance(t, nn.Parameter) else t
    if not is_quantized(data):
        return data.numel() * data.element_size()
    if format_of(data) == "nf4":
        return sum(getattr(data, n).numel() * getattr(data, n).element_size()
                   for n in ("quantized_data", "quantized_scalers", "quantization_factor"))
    return sum(getattr(data, n).numel() * getattr(data, n).element_size() for n in ("qdata", "scale"))


@torch.no_grad()
def quantize_linears(model: nn.Module, fmt: str, dtype: torch.dtype,
                     keep: Callable[[str, nn.Linear], bool] | None = None) -> int:
    """Every Linear of `model` whose weight suits `fmt` (and that `keep` does not keep) gets its weight
    quantized in place, one layer at a time (the plain weight freed as it goes); returns how many."""
    require(fmt)
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or is_quantized(module.weight):
            continue
        if (keep is not None and keep(name, module)) or not quantizable(module.weight, fmt):
            continue
        hold(module, quantize(module.weight, fmt, dtype))
        count += 1
    return count


def _per_row_dequantize(qdata: Tensor, scale: Tensor, zero: Tensor, dtype: torch.dtype) -> Tensor:
    # torchao's own arithmetic for its per-row fp8 and int8 weights (quant_primitives'
    # _dequantize_affine_float8 / dequantize_affine): upcast to fp32, shift, scale, cast down.
    return ((qdata.to(torch.float32) - zero) * scale).to(dtype)


def _nf4_dequantize(packed: Tensor, scalers: Tensor, nf4: Tensor) -> Tensor:
    # torchao's NF4Tensor.get_original_weight: two 4-bit codes a byte (the high nibble first), each looked
    # up in the 16 NF4 values and multiplied by its block's absmax, in the tensor's dtype (one rounding)
    blocks = scalers.shape[0]
    pairs = packed.view(blocks, -1)
    codes = torch.stack([pairs >> 4, pairs & 15], dim=-1).long()
    return nf4[codes] * scalers.view(blocks, 1, 1)


# below this many weights an eager cast takes well under a millisecond, no more than a compiled call's
# guard checks (the toy's layers); above it the fused loop wins (6× on a 12288×3072 layer)
COMPILED_MIN_WEIGHTS = 2**20
_compiled: dict[str, Callable] = {}
_compile_failed = False


def _compiled_arguments(data: Tensor, kind: str, dtype: torch.dtype) -> tuple[Callable, tuple] | None:
    """The arithmetic and its arguments for a weight the compiled path takes, else None."""
    if kind in ("fp8", "int8"):
        if tuple(data.block_size) != (1, data.shape[1]):
            return None
        zero = getattr(data, "zero_point", None)
        zero = torch.zeros((), dtype=torch.float32) if zero is None else zero.reshape(-1, 1).to(torch.float32)
        return _per_row_dequantize, (data.qdata, data.scale.reshape(-1, 1), zero, dtype)
    if kind == "nf4" and data.dtype == dtype:  # another dtype would round twice in eager: keep its path
        # the per-block scales (1/64 of the weights) come from torchao's own eager code
        scalers = data.dequantize_scalers(data.quantized_scalers, data.quantization_factor,
                                          data.scaler_block_size)
        return _nf4_dequantize, (data.quantized_data, scalers, data.nf4)
    return None


def compute_weight(t: Tensor, dtype: torch.dtype) -> Tensor:
    """The weight in `dtype` for one matmul: what `dequantize` gives, bit for bit, made faster on a CPU.
    PyTorch's eager fp8/int8 → fp32 → bf16 casts run at ~0.2 GB/s on a CPU (a 12288×3072 layer: 218 ms,
    three passes and a 150 MB fp32 temporary), which doubled a training step; the same arithmetic through
    torch.compile is one fused loop (33 ms, no temporary). nf4's eager unpacking holds two int64 code
    tensors (8 bytes a weight: 0.5 GB for Flux's 21504×3072 layer) and takes 455 ms there; compiled,
    152 ms and no temporary. CUDA's casts are fast: it keeps torchao's eager path there, as do small
    weights (COMPILED_MIN_WEIGHTS). Where no compiler is present, the eager path is used (said once)."""
    global _compile_failed
    data = t.data if isinstance(t, nn.Parameter) else t
    kind = format_of(data) if is_quantized(data) else None
    if kind not in ("fp8", "int8", "nf4") or _compile_failed or data.numel() < COMPILED_MIN_WEIGHTS \
            or _storage_device(data) != "cpu":
        return dequantize(data, dtype)
    found = _compiled_arguments(data, kind, dtype)
    if found is None:
        return dequantize(data, dtype)
    fn, args = found
    try:
        if fn.__name__ not in _compiled:
            _compiled[fn.__name__] = torch.compile(fn, dynamic=True)
        with torch.no_grad():
            return _compiled[fn.__name__](*args).reshape(data.shape)
    except Exception as e:  # no C++ compiler, or an inductor that cannot build here
        _compile_failed = True
        import logging

        logging.getLogger("lorakit").warning("quantized layers use PyTorch's eager dequantize (slower on a CPU): "
                                             "torch.compile is unavailable here (%s)", str(e).splitlines()[0][:120])
        return dequantize(data, dtype)


def _storage_device(data: Tensor) -> str:
    inner = getattr(data, "qdata", None)
    if inner is None:
        inner = getattr(data, "quantized_data", data)
    return inner.device.type


class _FrozenQuantizedLinear(torch.autograd.Function):
    """y = x·deq(W_q)ᵀ + b for a frozen quantized W whose backward dequantizes W again. Through torchao's
    own weight-only linears autograd saves the dequantized bf16 weight of every layer until the backward
    (measured: 12 fp8 layers of 4096² held 0.41 GB, their whole bf16 size), which undoes the format's
    saving while training; here only the quantized weight is kept. Written by hand because torchao's
    weight-only formats are built for inference and offer no such backward."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.weight = weight
        ctx.bias_shape = None if bias is None else bias.shape
        return F.linear(x, compute_weight(weight, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ compute_weight(ctx.weight, grad.dtype)
        if ctx.bias_shape is not None and ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, None, grad_bias


def _frozen_quantized_forward(module: nn.Linear, x: Tensor) -> Tensor:
    if not is_quantized(module.weight) or is_gguf(module.weight):  # a weight since put back plain
        return type(module).forward(module, x)
    bias = module.bias if module.bias is None or module.bias.dtype == x.dtype else module.bias.to(x.dtype)
    return _FrozenQuantizedLinear.apply(x, module.weight, bias)


def hold(module: nn.Linear, weight: Tensor) -> None:
    """`module` holds the quantized `weight`, frozen, and computes through _FrozenQuantizedLinear (a
    per-instance forward: what wraps the layer later, an adapter or an offloading hook, calls it)."""
    module.weight = nn.Parameter(weight, requires_grad=False)
    if "forward" not in module.__dict__:
        module.forward = types.MethodType(_frozen_quantized_forward, module)


def has_quantized(model: nn.Module) -> bool:
    return any(is_quantized(p) for p in model.parameters())


@torch.no_grad()
def cast_plain(model: nn.Module, dtype: torch.dtype | None, device: str | torch.device | None = None) -> nn.Module:
    """`model.to(device, dtype)`: quantized weights move and compute in `dtype` from then on, their stored
    data untouched (dtype None: only move)."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if is_gguf(p):  # diffusers' GGUFLinear dequantizes into the layer's own compute_dtype
                if device is not None and p.device != torch.device(device):
                    module._parameters[name] = p.to(device)
                if dtype is not None and hasattr(module, "compute_dtype"):
                    module.compute_dtype = dtype
                continue
            if is_quantized(p):
                q = p.data if dtype is None else with_compute_dtype(p, dtype)
                if device is not None and q.device != torch.device(device):
                    q = q.to(device)
                if q is not p.data:
                    module._parameters[name] = nn.Parameter(q, requires_grad=False)
                continue
            target = dtype if dtype is not None and p.is_floating_point() else p.dtype
            if p.dtype != target or (device is not None and p.device != torch.device(device)):
                p.data = p.data.to(device=device, dtype=target)
        for name, b in list(module._buffers.items()):
            if b is not None:
                target = dtype if dtype is not None and b.is_floating_point() else b.dtype
                module._buffers[name] = b.to(device=device, dtype=target)
    return model


def cast_module(module: nn.Module, device=None, dtype=None) -> nn.Module:
    """nn.Module.to without diffusers' override, which warns on every dtype cast; a module holding
    fp8/int8/nf4 weights (--base-precision) casts only its plain tensors: the quantized ones move, never
    dequantized (nn.Module.to would relabel an nf4 weight's dtype)."""
    if (device, dtype) == (None, None):
        return module
    if has_quantized(module):
        return cast_plain(module, dtype, device)
    return nn.Module.to(module, device=device, dtype=dtype)
