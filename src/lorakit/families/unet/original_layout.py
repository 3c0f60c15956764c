"""diffusers state dicts → the original (CompVis/SAI "LDM") single-file layout A1111 and ComfyUI load.

diffusers' package converts only original → diffusers (`loaders/single_file_utils.py`); the
inverse lives in an unpackaged script. So the inverse is written here, key by key, as the exact
mirror of diffusers' reader: a file written here and read back by diffusers gives the same
tensors (the tests check that to the bit). Pure key and tensor work: no diffusers import. The VAE
and CLIP writers are shared with other families (`models/ldm_components.py`); which text encoder
goes where is the family's `checkpoint_text_encoders`:

    UNet           model.diffusion_model.*            (paths from naming.diffusers_to_sai_unet_path)
    VAE            first_stage_model.*                (mid attention: Linear → 1x1 Conv)
    SD1 TE         cond_stage_model.transformer.text_model.*
    SD2 TE         cond_stage_model.model.*           (OpenCLIP: fused in_proj, resblocks, ln_final)
    SDXL TE1/TE2   conditioner.embedders.0.transformer.text_model.* / conditioner.embedders.1.model.*
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..base import LayoutError  # noqa: F401 - raised here, caught by models/saver.py
from . import naming
from ...models.ldm_components import clip_to_original, open_clip_to_original, vae_to_original

UNET_PREFIX = "model.diffusion_model."
_UNET_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")


def unet_to_original(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    layout = naming.UNetLayout.from_config(config)
    out = {}
    for key, value in state.items():
        new = naming.diffusers_to_sai_unet_path(key, layout)
        if new == key or not new.startswith(_UNET_ROOTS):
            raise LayoutError(f"UNet tensor {key} has no original-layout name")
        out[UNET_PREFIX + new] = value
    return out


def text_encoders_to_original(family, states: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Each text encoder in the layout and under the prefix its family gives (checkpoint_text_encoders)."""
    from ... import families

    layouts = families.get(family).checkpoint_text_encoders
    if len(states) != len(layouts):
        raise LayoutError(f"an {family} model has {len(layouts)} text encoder(s), not {len(states)}")
    writers = {"clip": clip_to_original, "open_clip": open_clip_to_original}
    out: dict[str, torch.Tensor] = {}
    for (kind, prefix), state in zip(layouts, states):
        out.update(writers[kind](state, prefix))
    return out


def to_original(family: str, unet=None, unet_config=None, vae=None, vae_config=None,
                text_encoders: list | None = None) -> dict[str, torch.Tensor]:
    """One original-layout state dict from diffusers/transformers state dicts (any part may be absent)."""
    out: dict[str, torch.Tensor] = {}
    if unet is not None:
        out.update(unet_to_original(unet, unet_config))
    if vae is not None:
        out.update(vae_to_original(vae, vae_config))
    if text_encoders:
        out.update(text_encoders_to_original(family, text_encoders))
    return out
