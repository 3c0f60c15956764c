"""Bake LoRAs into a base model and save it as a diffusers folder or an A1111 single file."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def merge_into_checkpoint(model_spec: str, loras: Sequence[str], out: Path, *, dtype: torch.dtype = torch.float16,
                          prediction_type: str | None = None, text_encoders: Path | None = None,
                          allow_pickle: bool = False) -> Path:
    """Load in fp32, merge every LoRA at its strength (fp32 math), save in `dtype`."""
    from ..errors import LoraKitError
    from ..generate import attach_loras, parse_lora_arg
    from ..models import load_model, save_model

    specs = [parse_lora_arg(x) for x in loras]
    for spec in specs:
        if not spec.path.is_file():
            raise LoraKitError("LoRA file not found", spec.path)
    out = Path(out)
    if out.exists() and out.is_file() and out.suffix != ".safetensors":
        raise LoraKitError("the output must be a folder or a .safetensors file", out)
    from ..writable import require_writable

    require_writable(out, folder=out.suffix != ".safetensors")
    # fp32 whatever the machine prefers: a merged checkpoint is W + ΔW in fp32, rounded once to the save dtype;
    # an fp8 or GGUF base is dequantized as it is read (never written back quantized behind the user's back)
    base = load_model(model_spec, dtype=torch.float32, device="cpu", prediction_type=prediction_type,
                      text_encoders=text_encoders, allow_pickle=allow_pickle, base_precision="fp32")
    base.require_finite()
    attach_loras(base, specs, merge=True, allow_pickle=allow_pickle)
    save_model(base, out, dtype=dtype)
    return out
