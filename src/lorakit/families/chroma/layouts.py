"""Chroma LoRA files: Flux.1's layouts on Chroma's layers (`naming.py`), in the shared DiT layouts
(`families/dit/layouts.py`), with T5 as the only text encoder.

- kohya (sd-scripts `networks/lora_flux.py`, `--model_type chroma`): Flux.1's `lora_unet_<BFL path>`
  names without the modulation layers, `lora_te3_` (T5). ComfyUI loads it, and diffusers converts
  it with its Flux converter (real width only).
- diffusers/PEFT: split `to_q/to_k/to_v` and `proj_mlp`; T5 under `text_encoder.`, ChromaPipeline's
  only text encoder (Flux.1's T5 is `text_encoder_2.`).
- ComfyUI: `diffusion_model.<BFL path>`, `text_encoders.t5xxl.transformer.`.
"""

from __future__ import annotations

from . import naming as chroma_naming
from ..dit.layouts import DitLayouts

FILES = DitLayouts(
    label="Chroma", naming=chroma_naming,
    diffusers_te={"te3": "text_encoder"}, comfy_te={"te3": "text_encoders.t5xxl.transformer"}, onetrainer_te={},
    check_names=True, te_hint="T5 (lora_te3_) and no CLIP")
read, reading, write_state = FILES.read, FILES.reading, FILES.write_state
_DOUBLE_DIFF = ("transformer.single_transformer_blocks.", "transformer.transformer_blocks.")


def layout_of(keys) -> str | None:
    """Which of Chroma's own layouts a file's keys are in (None: none of them). Flux.1's layouts
    share these names: the families' evidence on each reading decides."""
    keys = list(keys)
    if any(k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.",
                         "text_encoders.t5xxl.")) for k in keys):
        return "comfyui"
    if any(k.startswith(_DOUBLE_DIFF) for k in keys):
        return "diffusers"
    return None
