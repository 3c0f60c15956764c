"""Device and dtype names as users type them."""

from __future__ import annotations

import torch

from .errors import LoraKitError

DTYPES = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise LoraKitError(f"unknown dtype {name!r}: choose fp16, bf16 or fp32") from None


def resolve_device_dtype(device: str = "auto", dtype: str = "auto", model: str | None = None) -> tuple[str, torch.dtype]:
    """auto: CUDA (fp16) when present, then MPS (fp16), else CPU in fp32 (bf16 only where `model`'s fp32
    weights would not fit in memory): the formats that show a LoRA's effect (lorakit.precision)."""
    device, precision = _resolve(device, dtype, model)
    return device, precision.dtype


def _resolve(device: str, dtype: str, model: str | None, base_precision: str = "auto"):
    from .precision import Precision, choose_for_images
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoraKitError(f"--device {device}: no CUDA device is available")
    if dtype != "auto":
        asked = Precision(_NAMES[parse_dtype(dtype)], "as asked")
        if base_precision in _plain() and base_precision != asked.name:
            raise LoraKitError(f"--dtype {dtype} and --base-precision {base_precision} disagree: give one of them")
        return device, asked
    if base_precision in _plain():
        return device, Precision(base_precision, "as --base-precision asks")
    weights = available = None
    if device == "cpu" and model is not None and base_precision == "auto":
        from .fit_check import available_bytes
        from .models.size import weight_count

        weights, available = weight_count(str(model)), available_bytes("cpu")
    precision = choose_for_images(device, weights, available)
    if base_precision != "auto":  # fp8, int8, nf4: the whole pipeline computes as the quantized layers do
        from .models.base_precision import compute_dtype

        name = _NAMES[compute_dtype(base_precision, device, precision.dtype)]
        return device, Precision(name, f"what {base_precision} weights compute in on {device}")
    return device, precision


_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _plain() -> tuple[str, ...]:
    from .quantized import PLAIN_DTYPES

    return tuple(PLAIN_DTYPES)


def load_model_for_inference(spec: str, device: str = "auto", dtype: str = "auto", base_precision: str = "auto",
                             **load_kwargs):
    """load_model with `--device`/`--dtype`/`--base-precision` resolved (auto as resolve_device_dtype
    says; a plain base precision is the dtype, fp8/int8/nf4 compute in the device's half format unless
    --dtype says otherwise); the choice is kept as `model.precision` and printed by the first
    generation (after its input is checked, so a bad argument still ends in one line)."""
    from .models import load_model
    from .models.base_precision import parse
    from .quantized import require

    fmt = parse(base_precision)
    dev, precision = _resolve(device, dtype, spec, fmt)
    require(fmt, dev)
    model = load_model(spec, dtype=precision.dtype, device=dev, base_precision=fmt, **load_kwargs)
    model.precision = precision
    return model
