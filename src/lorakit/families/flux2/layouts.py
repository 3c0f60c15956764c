"""Flux.2 LoRA files: the shared DiT layouts (`families/dit/layouts.py`) on Flux.2's names (`naming.py`),
with no text-encoder LoRA (musubi-tuner's `networks/lora_flux_2.py` adapts the transformer only).

- kohya / musubi-tuner: `lora_unet_<BFL path>` with fused `img_attn_qkv`, `txt_attn_qkv`; a single
  block's `linear1` / `linear2` are one layer in every layout. diffusers converts it
  (`_convert_kohya_flux2_lora_to_diffusers`, any width).
- diffusers/PEFT: `transformer.<diffusers path>`, q/k/v split in the double blocks.
- ComfyUI (and ai-toolkit): `diffusion_model.<BFL path>`, which diffusers converts as well.
"""

from __future__ import annotations

from . import naming as flux2_naming
from ..dit.layouts import DitLayouts

FILES = DitLayouts(label="Flux.2", naming=flux2_naming, diffusers_te={}, comfy_te={}, onetrainer_te={},
                   check_names=True, te_hint="no text-encoder LoRA (its LLM never trains)")
read, reading, write_state, check_kohya_names = FILES.read, FILES.reading, FILES.write_state, FILES.check_kohya_names
_DOUBLE_DIFF = ("transformer.single_transformer_blocks.", "transformer.transformer_blocks.")
_SINGLE_FUSED = (".attn.to_qkv_mlp_proj.", ".attn.to_out.")


def layout_of(keys) -> str | None:
    """Which of Flux.2's own layouts a file's keys are in (None: none of them). Flux.1's layouts share
    the BFL names; the families' evidence on each reading decides."""
    keys = list(keys)
    if any(k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.")) for k in keys):
        return "comfyui"
    if any(k.startswith(_DOUBLE_DIFF) for k in keys):
        return "diffusers"
    return None
