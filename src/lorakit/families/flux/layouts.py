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

from typing import Mapping

from . import naming as flux_naming
from ..dit.layouts import LAYOUTS, DitLayouts
from ...formats.modules import Modules

FILES = DitLayouts(
    label="Flux", naming=flux_naming,
    diffusers_te={"te1": "text_encoder", "te3": "text_encoder_2"},
    comfy_te={"te1": "text_encoders.clip_l.transformer", "te3": "text_encoders.t5xxl.transformer"},
    onetrainer_te={"te1": "lora_te1_", "te3": "lora_te2_"},
    check_names=True, te_hint="CLIP-L (lora_te1_) and T5 (lora_te3_)")
read, write_state, check_kohya_names = FILES.read, FILES.write_state, FILES.check_kohya_names
__all__ = ["FILES", "LAYOUTS", "check_kohya_names", "is_flux_modules", "layout_of", "read", "write_state"]
_DOUBLE_DIFF = ("transformer.single_transformer_blocks.", "transformer.transformer_blocks.")


def _says_flux(metadata: Mapping[str, str] | None) -> bool:
    md = metadata or {}
    return md.get("ss_base_model_version", "").startswith("flux") or \
        md.get("modelspec.architecture", "").startswith("flux")


def layout_of(keys, metadata: Mapping[str, str] | None = None) -> str | None:
    """Which Flux layout a file's keys are in (None when they are not a Flux LoRA).

    Names alone cannot tell a Flux diffusers file that adapts double blocks only from an SD3 one
    (both have `transformer_blocks.N.attn.to_q`); single blocks or the metadata decide.
    """
    keys = list(keys)
    flux_md = _says_flux(metadata)
    if any(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys):
        return "kohya"
    if any(k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.")) for k in keys):
        return "comfyui"
    if any(k.startswith("lora_transformer_single_transformer_blocks_") for k in keys) or \
            (flux_md and any(k.startswith("lora_transformer_") for k in keys)):
        return "onetrainer"
    if any(k.startswith("transformer.single_transformer_blocks.") for k in keys) or \
            (flux_md and any(k.startswith(_DOUBLE_DIFF) for k in keys)):
        return "diffusers"
    if flux_md and any(k.startswith(("lora_unet_", "lora_te1_", "lora_te3_")) for k in keys):
        return "kohya"
    return None


def is_flux_modules(modules: Modules) -> bool:
    return any(flux_naming.is_kohya_name(n) for n in modules)
