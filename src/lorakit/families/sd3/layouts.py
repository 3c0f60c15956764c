"""SD 3.x LoRA files: which layout a file is in, and where SD3's names and text encoders go in the
shared DiT layouts (`families/dit/layouts.py`).

- kohya (sd-scripts `networks/lora_sd3.py`): `lora_unet_<SAI path>` with fused `attn_qkv`,
  `lora_te1_` (CLIP-L), `lora_te2_` (CLIP-G), `lora_te3_` (T5). ComfyUI loads it; diffusers does
  not (it has no converter for these keys).
- diffusers/PEFT: `transformer.<diffusers path>` with split `to_q/to_k/to_v`, `text_encoder{,_2,_3}.`
- ComfyUI: `diffusion_model.<SAI path>`, `text_encoders.clip_l|clip_g|t5xxl.transformer.<path>`.
- OneTrainer: `lora_transformer_<diffusers path with _>` (split q/k/v), `lora_te1_`…`lora_te3_`.
"""

from __future__ import annotations

from . import naming as sd3_naming
from ..dit.layouts import LAYOUTS, DitLayouts

FILES = DitLayouts(
    label="SD3", naming=sd3_naming,
    diffusers_te={"te1": "text_encoder", "te2": "text_encoder_2", "te3": "text_encoder_3"},
    comfy_te={"te1": "text_encoders.clip_l.transformer", "te2": "text_encoders.clip_g.transformer",
              "te3": "text_encoders.t5xxl.transformer"},
    onetrainer_te={"te1": "lora_te1_", "te2": "lora_te2_", "te3": "lora_te3_"},
    te_hint="CLIP-L (lora_te1_), CLIP-G (lora_te2_) and T5 (lora_te3_)")
read, reading, write_state = FILES.read, FILES.reading, FILES.write_state
__all__ = ["FILES", "LAYOUTS", "layout_of", "read", "reading", "write_state"]


def layout_of(keys) -> str | None:
    """Which of SD3's own layouts a file's keys are in (None: none of them). Flux's layouts share
    some of these names (double blocks, CLIP-L): the families' evidence on each reading decides."""
    keys = list(keys)
    if any(k.startswith("lora_transformer_") for k in keys):
        return "onetrainer"
    if any(k.startswith(("diffusion_model.joint_blocks.", "text_encoders.clip_")) for k in keys):
        return "comfyui"
    if any(k.startswith(("transformer.transformer_blocks.", "text_encoder_3.")) for k in keys):
        return "diffusers"
    return None

