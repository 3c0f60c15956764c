"""Flux.1 LoRA files: which layout a file is in, and where Flux's names and text encoders go in
the shared DiT layouts (`families/dit/layouts.py`).

- kohya (sd-scripts `networks/lora_flux.py`): `lora_unet_<BFL path>` with fused `img_attn_qkv`,
  `txt_attn_qkv` and `single_blocks_N_linear1` (q | k | v | MLP), `lora_te1_` (CLIP-L) and
  `lora_te3_` (T5, kohya's number for it). ComfyUI loads it, and diffusers converts it
  (`_convert_kohya_flux_lora_to_diffusers`, real width only).
- diffusers/PEFT: split `to_q/to_k/to_v` and `proj_mlp`, `text_encoder.` (CLIP) / `text_encoder_2.` (T5).
- ComfyUI: `diffusion_model.<BFL path>`, `text_encoders.clip_l|t5xxl.transformer.`.
- OneTrainer: `lora_transformer_<diffusers path with _>` (split), `lora_te1_` (CLIP),
  `lora_te2_` (T5: OneTrainer numbers its second encoder 2).
"""

from __future__ import annotations

from . import naming as flux_naming
from ..dit.layouts import LAYOUTS, DitLayouts

FILES = DitLayouts(
    label="Flux", naming=flux_naming,
    diffusers_te={"te1": "text_encoder", "te3": "text_encoder_2"},
    comfy_te={"te1": "text_encoders.clip_l.transformer", "te3": "text_encoders.t5xxl.transformer"},
    onetrainer_te={"te1": "lora_te1_", "te3": "lora_te2_"},
    check_names=True, te_hint="CLIP-L (lora_te1_) and T5 (lora_te3_)")
read, reading, write_state, check_kohya_names = FILES.read, FILES.reading, FILES.write_state, FILES.check_kohya_names
__all__ = ["FILES", "LAYOUTS", "check_kohya_names", "layout_of", "read", "reading", "write_state"]
_DOUBLE_DIFF = ("transformer.single_transformer_blocks.", "transformer.transformer_blocks.")


def layout_of(keys) -> str | None:
    """Which of Flux's own layouts a file's keys are in (None: none of them). SD3's layouts share
    some of these names (double blocks are SD3's joint blocks in diffusers' spelling, CLIP-L):
    the families' evidence on each reading decides."""
    keys = list(keys)
    if any(k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.",
                         "text_encoders.clip_l.", "text_encoders.t5xxl.")) for k in keys):
        return "comfyui"
    if any(k.startswith("lora_transformer_") for k in keys):
        return "onetrainer"
    if any(k.startswith(_DOUBLE_DIFF) for k in keys):
        return "diffusers"
    return None

