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


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, torch.dtype]:
    """auto: CUDA (fp16) when present, then MPS (fp16), else CPU (fp32: CPU half kernels are slow)."""
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LoraKitError(f"--device {device}: no CUDA device is available")
    if dtype == "auto":
        return device, torch.float32 if device == "cpu" else torch.float16
    return device, parse_dtype(dtype)
