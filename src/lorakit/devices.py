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
    """auto: CUDA (fp16) when present, then MPS (fp16), else CPU: bf16 where the CPU has bf16 arithmetic
    and `model`'s denoiser is large enough for it to pay (lorakit.precision), else fp32."""
    device, precision = _resolve(device, dtype, model)
    return device, precision.dtype


def _resolve(device: str, dtype: str, model: str | None, parameters: int | None = None):
    from .precision import Precision, choose
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
        return device, Precision({torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[
            parse_dtype(dtype)], "as asked")
    if device != "cpu":
        return device, Precision("fp16", f"{device} device")
    if parameters is None and model is not None:
        from .models.size import denoiser_parameters

        parameters = denoiser_parameters(str(model))
    if parameters is None and model is None:
        return device, Precision("fp32", "CPU, model not named")
    return device, choose(device, parameters, "auto")


def load_model_for_inference(spec: str, device: str = "auto", dtype: str = "auto", **load_kwargs):
    """load_model with `--device`/`--dtype` resolved (auto as resolve_device_dtype says); the choice is
    kept as `model.precision` and printed by the first generation (after its input is checked, so a
    bad argument still ends in one line). A model whose size only loading tells (single file, hub id)
    is loaded as bf16 would be and loaded again in fp32 if it proves too small for bf16 to pay."""
    from .models import load_model
    from .precision import count_parameters

    dev, precision = _resolve(device, dtype, spec)
    model = load_model(spec, dtype=precision.dtype, device=dev, **load_kwargs)
    if not precision.final:
        _, precision = _resolve(dev, dtype, spec, count_parameters(model.unet))
        if precision.dtype != model.unet.dtype:
            del model
            model = load_model(spec, dtype=precision.dtype, device=dev, **load_kwargs)
    model.precision = precision
    return model
