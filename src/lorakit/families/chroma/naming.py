"""Chroma's names: Flux.1's BFL ↔ diffusers tables minus the layers Chroma pruned, plus its
approximator.

Chroma drops every modulation Linear of Flux.1 (`img_mod.lin`, `txt_mod.lin`, `modulation.lin`,
`final_layer.adaLN_modulation.1`) and the time, vector and guidance embedders; one small MLP, the
approximator (`distilled_guidance_layer`), computes all modulation vectors instead. The single file
keeps BFL's names for the rest, so Flux's tables translate them; the approximator differs only in
its MLP and norm names (`in_layer`/`out_layer`/`scale` there, `linear_1`/`linear_2`/`weight` in
diffusers, as `convert_chroma_transformer_checkpoint_to_diffusers` maps them).

sd-scripts' `networks/lora_flux.py` adapts the Linears of `DoubleStreamBlock`/`SingleStreamBlock`
only: the approximator never gets a LoRA, and it is in no table here either.

The functions are those of every DiT naming module (`dit/naming.py`), so the shared layouts and
targets take this module as they take Flux's.
"""

from __future__ import annotations

import re

from torch import Tensor

from ..flux import naming as flux_naming

BFL = "model.diffusion_model."  # the prefix ComfyUI-style repacks put before every key

APPROXIMATOR = "distilled_guidance_layer."
_PRUNED_INNER = ("img_mod.lin", "txt_mod.lin", "modulation.lin")
_PRUNED_TOP = ("time_in.", "vector_in.", "guidance_in.", "final_layer.adaLN_modulation.")
_TO_DIFFUSERS = ((re.compile(r"^layers\.(\d+)\.in_layer\.(weight|bias|weight_scale)$"), r"layers.\1.linear_1.\2"),
                 (re.compile(r"^layers\.(\d+)\.out_layer\.(weight|bias|weight_scale)$"), r"layers.\1.linear_2.\2"),
                 (re.compile(r"^norms\.(\d+)\.scale$"), r"norms.\1.weight"))
_TO_BFL = ((re.compile(r"^layers\.(\d+)\.linear_1\.(weight|bias)$"), r"layers.\1.in_layer.\2"),
           (re.compile(r"^layers\.(\d+)\.linear_2\.(weight|bias)$"), r"layers.\1.out_layer.\2"),
           (re.compile(r"^norms\.(\d+)\.weight$"), r"norms.\1.scale"))


def _pruned(bfl_path: str) -> bool:
    return bfl_path.endswith(_PRUNED_INNER) or bfl_path.startswith(_PRUNED_TOP)


# ---- the naming interface of the DiT layouts and targets (`dit/naming.py`): Flux's, pruned ----------------

kohya_name, fused_rows, container = flux_naming.kohya_name, flux_naming.fused_rows, flux_naming.container


def is_sai_path(path: str) -> bool:
    """A layer of Chroma's transformer that a LoRA may adapt, in BFL's spelling."""
    return flux_naming.is_sai_path(path) and not _pruned(path)


def is_diffusers_path(path: str) -> bool:
    return flux_naming.is_diffusers_path(path) and not _pruned(flux_naming.sai_of(path)[0])


def sai_of(diffusers_path: str) -> tuple[str, int, int]:
    """(BFL path, which piece, how many pieces) of a diffusers Chroma transformer module path."""
    if not is_diffusers_path(diffusers_path):
        raise KeyError(f"not a Chroma transformer module: {diffusers_path}")
    return flux_naming.sai_of(diffusers_path)


def diffusers_rows(bfl_path: str, rows: int, in_features: int) -> list:
    if _pruned(bfl_path):
        raise KeyError(f"not a Chroma module: {bfl_path}")
    return flux_naming.diffusers_rows(bfl_path, rows, in_features)


def sai_path_of_kohya(name: str) -> str | None:
    """`lora_unet_double_blocks_3_img_attn_qkv` → `double_blocks.3.img_attn.qkv` (None if not Chroma's)."""
    bfl = flux_naming.sai_path_of_kohya(name)
    return None if bfl is None or _pruned(bfl) else bfl


def diffusers_path_of_underscored(rest: str) -> str | None:
    path = flux_naming.diffusers_path_of_underscored(rest)
    return path if path is not None and is_diffusers_path(path) else None


def is_kohya_name(name: str) -> bool:
    return sai_path_of_kohya(name) is not None


def default_kohya_names(double: int = 19, single: int = 38, t5_layers: int = 0) -> list[str]:
    """The names sd-scripts' `lora_flux.py` makes on Chroma (`--model_type chroma`): Flux.1's
    block Linears without the modulation ones, T5's (`lora_te3_`) with `train_t5xxl`."""
    names = flux_naming.default_kohya_names(double, single, clip_layers=0, t5_layers=t5_layers)
    return [n for n in names if n.startswith("lora_te3_") or is_kohya_name(n)]


# ---- whole checkpoints: the single file ↔ diffusers ---------------------------------------------------------

def _rename(key: str, table) -> str:
    rest = key[len(APPROXIMATOR):]
    for pattern, repl in table:
        if pattern.match(rest):
            return APPROXIMATOR + pattern.sub(repl, rest)
    return key  # in_proj, out_proj: the same names in both


def bfl_state_to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The single file's keys (with or without `model.diffusion_model.`) → ChromaTransformer2DModel's,
    at any width (diffusers' converter fixes it at 3072)."""
    state = {k[len(BFL):] if k.startswith(BFL) else k: v
             for k, v in state.items()}
    out = {_rename(k, _TO_DIFFUSERS): v for k, v in state.items() if k.startswith(APPROXIMATOR)}
    out.update(flux_naming.bfl_state_to_diffusers({k: v for k, v in state.items() if not k.startswith(APPROXIMATOR)}))
    return out


def diffusers_state_to_bfl(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ChromaTransformer2DModel state dict → the single file's keys (as lodestones ship it)."""
    out = {_rename(k, _TO_BFL): v for k, v in state.items() if k.startswith(APPROXIMATOR)}
    out.update(flux_naming.diffusers_state_to_bfl({k: v for k, v in state.items() if not k.startswith(APPROXIMATOR)}))
    return out
