"""Qwen-Image LoRA files, in the shared DiT layouts (`families/dit/layouts.py`) with the one name
table of `naming.py` (no layer is fused, so every layout holds the same modules).

- kohya / musubi-tuner (`networks/lora_qwen_image.py`): `lora_unet_<path with _>`, `alpha` each.
  diffusers (`_convert_non_diffusers_qwen_lora_to_diffusers`) and ComfyUI load it.
- diffusers/PEFT: `transformer.<path>.lora_A/B.weight`, what diffusers' Qwen-Image trainer saves.
- ComfyUI: `diffusion_model.<path>.lora_down/up.weight`, `.alpha` (its lora.py maps these, the bare
  `<path>` and `transformer.<path>` for QwenImage).
- OneTrainer: `lora_transformer_<path with _>`.

The text encoder (Qwen2.5-VL, 7 B) is never adapted: no layout holds a text-encoder module.
"""

from __future__ import annotations

from . import naming as qwen_naming
from ..dit.layouts import DitLayouts

FILES = DitLayouts(label="Qwen-Image", naming=qwen_naming, diffusers_te={}, comfy_te={}, onetrainer_te={},
                   check_names=True, te_hint="no text-encoder LoRA (Qwen2.5-VL is never adapted)")
_DIFFUSERS = "transformer.transformer_blocks."


def layout_of(keys) -> str | None:
    """Which of Qwen-Image's own layouts a file's keys are in (None: none of them). Flux.1's diffusers
    layout shares `transformer.transformer_blocks.`: the families' evidence on each reading decides."""
    keys = list(keys)
    if any(k.startswith("diffusion_model.transformer_blocks.") for k in keys):
        return "comfyui"
    if any(k.startswith(_DIFFUSERS) for k in keys):
        return "diffusers"
    if any(k.startswith("lora_transformer_transformer_blocks_") for k in keys):
        return "onetrainer"
    return None
