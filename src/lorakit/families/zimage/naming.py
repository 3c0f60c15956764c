"""Z-Image's names: diffusers' module paths, the kohya names musubi-tuner gives them, and the
original layout (Tongyi-MAI's single file, ComfyUI's `NextDiT`).

musubi-tuner's own Z-Image model keeps diffusers' module tree (split `to_q/to_k/to_v`,
`to_out.0`), so its kohya names are the diffusers paths with `_`: `lora_unet_layers_3_attention_to_q`.
The original layout differs in a few names only: q, k and v stacked in `attention.qkv`,
`attention.out`, `q_norm`/`k_norm`, and `x_embedder` / `final_layer` without diffusers'
`all_…2-1` patch-size keys (diffusers' `convert_z_image_transformer_checkpoint_to_diffusers`
and ComfyUI's `z_image_to_diffusers` hold the same table).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

PREFIX = "lora_unet_"
BFL = "model.diffusion_model."  # the prefix ComfyUI-style repacks put before every key
BLOCKS = ("layers", "noise_refiner", "context_refiner", "siglip_refiner")
# the Linears of one ZImageTransformerBlock: diffusers path → kohya spelling (after the block)
_BLOCK_LINEARS = {"attention.to_q": "attention_to_q", "attention.to_k": "attention_to_k",
                  "attention.to_v": "attention_to_v", "attention.to_out.0": "attention_to_out_0",
                  "feed_forward.w1": "feed_forward_w1", "feed_forward.w2": "feed_forward_w2",
                  "feed_forward.w3": "feed_forward_w3", "adaLN_modulation.0": "adaLN_modulation_0"}
_TOP = re.compile(r"^(all_x_embedder\.\d+-\d+|all_final_layer\.\d+-\d+\.linear"
                  r"|all_final_layer\.\d+-\d+\.adaLN_modulation\.1|t_embedder\.mlp\.[02]|cap_embedder\.1"
                  r"|siglip_embedder\.1)$")
_BLOCK = re.compile(rf"^({'|'.join(BLOCKS)})\.(\d+)\.(.+)$")
KOHYA_BLOCK = re.compile(rf"^({'|'.join(BLOCKS)})_(\d+)_(.+)$")
_KOHYA_TOP = {re.compile(r"^all_x_embedder_(\d+-\d+)$"): r"all_x_embedder.\1",
              re.compile(r"^all_final_layer_(\d+-\d+)_linear$"): r"all_final_layer.\1.linear",
              re.compile(r"^all_final_layer_(\d+-\d+)_adaLN_modulation_1$"):
                  r"all_final_layer.\1.adaLN_modulation.1",
              re.compile(r"^t_embedder_mlp_([02])$"): r"t_embedder.mlp.\1",
              re.compile(r"^cap_embedder_1$"): "cap_embedder.1",
              re.compile(r"^siglip_embedder_1$"): "siglip_embedder.1"}
_OF_KOHYA_BLOCK = {v: k for k, v in _BLOCK_LINEARS.items()}
QKV = ("to_q", "to_k", "to_v")


# ---- diffusers paths ↔ kohya names --------------------------------------------------------------------------

def is_diffusers_path(path: str) -> bool:
    """A Linear of ZImageTransformer2DModel (the omni variant's SigLIP layers included)."""
    m = _BLOCK.match(path)
    if m:
        return m.group(3) in _BLOCK_LINEARS
    return bool(_TOP.match(path))


def kohya_name(path: str) -> str:
    return PREFIX + path.replace(".", "_")


def path_of_kohya(name: str) -> str | None:
    """`lora_unet_layers_3_attention_to_out_0` → `layers.3.attention.to_out.0` (None: no Z-Image layer)."""
    if not name.startswith(PREFIX):
        return None
    rest = name[len(PREFIX):]
    m = KOHYA_BLOCK.match(rest)
    if m:
        sub = _OF_KOHYA_BLOCK.get(m.group(3))
        return None if sub is None else f"{m.group(1)}.{m.group(2)}.{sub}"
    for pattern, repl in _KOHYA_TOP.items():
        if pattern.match(rest):
            return pattern.sub(repl, rest)
    return None


def is_kohya_name(name: str) -> bool:
    return path_of_kohya(name) is not None


def block_of(path: str) -> tuple[str, int, str] | None:
    """(`layers`, 3, `attention.to_q`) of a block layer's path; None outside the blocks."""
    m = _BLOCK.match(path)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def default_kohya_names(layers: int = 30) -> list[str]:
    """The names musubi-tuner's `networks/lora_zimage.py` makes: the attention and MLP Linears of the
    main `layers` (refiners and adaLN excluded by its `.*(_modulation|_refiner).*` pattern)."""
    return [kohya_name(f"layers.{i}.{sub}") for i in range(layers) for sub in _BLOCK_LINEARS
            if not sub.startswith("adaLN")]


# ---- the original layout (single file, ComfyUI) ↔ diffusers ---------------------------------------------------

_TO_ORIGINAL = ((re.compile(r"^all_x_embedder\.2-1\."), "x_embedder."),
                (re.compile(r"^all_final_layer\.2-1\."), "final_layer."),
                (re.compile(r"\.attention\.to_out\.0\."), ".attention.out."),
                (re.compile(r"\.attention\.norm_q\."), ".attention.q_norm."),
                (re.compile(r"\.attention\.norm_k\."), ".attention.k_norm."))


def original_path(path: str) -> str:
    """The original-layout name of a diffusers module path (q, k, v all name `attention.qkv`)."""
    key = _rename(path + ".")
    for q in QKV:
        key = key.replace(f".attention.{q}.", ".attention.qkv.")
    return key[:-1]


def _rename(key: str) -> str:
    for pattern, repl in _TO_ORIGINAL:
        key = pattern.sub(repl, key)
    return key


def diffusers_path_of_original(path: str) -> tuple[str, ...] | None:
    """The diffusers path(s) of an original-layout module: q, k, v for `attention.qkv` (in row
    order), one path otherwise; None when it is no Z-Image layer."""
    key = "all_x_embedder.2-1" if path == "x_embedder" else re.sub(r"^final_layer\.", "all_final_layer.2-1.", path)
    m = _BLOCK.match(key)
    if m and m.group(3) == "attention.qkv":
        return tuple(f"{m.group(1)}.{m.group(2)}.attention.{q}" for q in QKV)
    if m and m.group(3) == "attention.out":
        key = f"{m.group(1)}.{m.group(2)}.attention.to_out.0"
    return (key,) if is_diffusers_path(key) else None


def diffusers_state_to_original(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ZImageTransformer2DModel state dict → the single file's keys (q, k, v stacked)."""
    out: dict[str, Tensor] = {}
    stacks: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        for q in QKV:
            tag = f".attention.{q}."
            if tag in key:
                stacks.setdefault(key.replace(tag, ".attention.qkv."), {})[q] = value
                break
        else:
            out[_rename(key)] = value
    for key, pieces in stacks.items():
        out[key] = torch.cat([pieces[q] for q in QKV], dim=0)
    return out


def original_state_to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The single file's keys (with or without `model.diffusion_model.`) → ZImageTransformer2DModel's,
    by diffusers' own `convert_z_image_transformer_checkpoint_to_diffusers`; works on any subset of
    the keys (one module at a time when streamed)."""
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    done = {k: v for k, v in state.items() if _is_diffusers_key(k)}  # a file already in diffusers' names
    rest = {k: v for k, v in state.items() if k not in done}
    return {**done, **(convert_z_image_transformer_checkpoint_to_diffusers(rest) if rest else {})}


def _is_diffusers_key(key: str) -> bool:
    """Whether a key is spelt as only diffusers spells it (the other keys are the same in both layouts)."""
    return key.startswith(("all_x_embedder.", "all_final_layer.")) or \
        any(f".attention.{n}." in key for n in ("to_q", "to_k", "to_v", "to_out", "norm_q", "norm_k"))
