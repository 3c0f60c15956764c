"""Qwen-Image's names: one table, the same in every layout.

Qwen published the transformer in diffusers' own layout, and every other tool kept it: ComfyUI's
`comfy/ldm/qwen_image/model.py` and musubi-tuner's `qwen_image/qwen_image_model.py` name their
modules as `QwenImageTransformer2DModel` does, and diffusers' single-file loader maps the file
by identity. So no layer is fused or reordered anywhere: the original path *is* the diffusers
path, each kohya module is one Linear, and only the spelling differs between layouts
(`lora_unet_transformer_blocks_0_attn_to_q`, `diffusion_model.transformer_blocks.0.attn.to_q`,
`transformer.transformer_blocks.0.attn.to_q`).

musubi-tuner's `networks/lora_qwen_image.py` adapts every Linear of `QwenImageTransformerBlock`,
the modulation ones (`img_mod.1`, `txt_mod.1`) included: its `.*(_mod_).*` exclude pattern is
matched against the dotted name, which has `_mod.`, so it never fires (840 modules on the real
model, recorded by running its code: tests/data/musubi_names_qwenimage.json).

The functions are those of every DiT naming module (`dit/naming.py`), so the shared layouts and
targets take this module as they take Flux's.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..dit.naming import UNET_PREFIX, kohya_name  # noqa: F401 - part of the naming interface

BFL = "model.diffusion_model."  # the prefix ComfyUI-style repacks may put before every key

_ATTN = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
         "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
_MLP = ("img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2")
_MOD = ("img_mod.1", "txt_mod.1")
BLOCK_LAYERS = _ATTN + _MLP + _MOD  # musubi-tuner's order of a block's Linears does not matter: sorted names
TOP = ("img_in", "txt_in", "proj_out", "norm_out.linear",
       "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2")
_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_UNDERSCORED_BLOCK = re.compile(r"^transformer_blocks_(\d+)_(.+)$")
_INNER = {p.replace(".", "_"): p for p in BLOCK_LAYERS}
_TOP = {p.replace(".", "_"): p for p in TOP}


def is_sai_path(path: str) -> bool:
    """A Linear of Qwen-Image's transformer that a LoRA may adapt."""
    m = _BLOCK.match(path)
    return m[2] in BLOCK_LAYERS if m else path in TOP


is_diffusers_path = is_sai_path


def sai_of(diffusers_path: str) -> tuple[str, int, int]:
    """(original path, piece, pieces): the path itself, one piece (nothing is fused)."""
    if not is_sai_path(diffusers_path):
        raise KeyError(f"not a Qwen-Image transformer module: {diffusers_path}")
    return diffusers_path, 0, 1


def diffusers_rows(path: str, rows: int, in_features: int) -> list[tuple[str, Tensor]]:
    if not is_sai_path(path):
        raise KeyError(f"not a Qwen-Image module: {path}")
    return [(path, torch.arange(rows))]


def container(path: str) -> str:
    """The preset group: attention, mlp, adaLN (a block's modulation) or embed (outside the blocks)."""
    m = _BLOCK.match(path)
    if not m:
        return "MMDiT.embed"
    inner = m[2]
    return "MMDiT.adaLN" if inner in _MOD else "MMDiT.mlp" if inner in _MLP else "MMDiT.attn"


def diffusers_path_of_underscored(rest: str) -> str | None:
    """`transformer_blocks_3_img_mlp_net_0_proj` → `transformer_blocks.3.img_mlp.net.0.proj`."""
    m = _UNDERSCORED_BLOCK.match(rest)
    if m:
        inner = _INNER.get(m[2])
        return None if inner is None else f"transformer_blocks.{int(m[1])}.{inner}"
    return _TOP.get(rest)


def sai_path_of_kohya(name: str) -> str | None:
    return diffusers_path_of_underscored(name[len(UNET_PREFIX):]) if name.startswith(UNET_PREFIX) else None


def is_kohya_name(name: str) -> bool:
    return sai_path_of_kohya(name) is not None


def default_kohya_names(blocks: int = 60) -> list[str]:
    """The names musubi-tuner's `lora_qwen_image.py` gives a model of `blocks` blocks: every block Linear."""
    return sorted(kohya_name(f"transformer_blocks.{i}.{p}") for i in range(blocks) for p in BLOCK_LAYERS)


def strip_prefix(state: dict) -> dict:
    """The single file's keys without `model.diffusion_model.` where a repack added it."""
    return {k[len(BFL):] if k.startswith(BFL) else k: v for k, v in state.items()}
