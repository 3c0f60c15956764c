"""Flux.2 transformer module names: BFL's (the single file, musubi-tuner, ComfyUI) and diffusers'.

The blocks are Flux.1's in shape, with three differences that matter here: no modulation Linear
inside a block (three shared ones, `double_stream_modulation_img/txt.lin` and
`single_stream_modulation.lin`, sit at the top), SwiGLU MLPs (`img_mlp.0` holds gate | up rows),
and a single block that diffusers keeps fused as BFL does (`linear1` = `attn.to_qkv_mlp_proj`,
`linear2` = `attn.to_out`). Only a double block's `img_attn.qkv` / `txt_attn.qkv` is split in
diffusers (`attn.to_q/k/v`, `attn.add_q/k/v_proj`); the final adaLN halves are swapped as in
Flux.1. This is `convert_flux2_transformer_checkpoint_to_diffusers` (diffusers 0.42.1), written as
row tables so that LoRA files (which name only some layers) and narrow test models map too.

The functions are those of every DiT naming module (`dit/naming.py`).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..dit.naming import UNET_PREFIX, kohya_name, split_rows, stack_pieces, swap_rows, underscored

BFL = "model.diffusion_model."
_DOUBLE = (
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("img_attn.proj", ("attn.to_out.0",)),
    ("txt_attn.proj", ("attn.to_add_out",)),
    ("img_mlp.0", ("ff.linear_in",)),
    ("img_mlp.2", ("ff.linear_out",)),
    ("txt_mlp.0", ("ff_context.linear_in",)),
    ("txt_mlp.2", ("ff_context.linear_out",)),
)
_SINGLE = (
    ("linear1", ("attn.to_qkv_mlp_proj",)),
    ("linear2", ("attn.to_out",)),
)
_TOP = (
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    ("time_in.in_layer", "time_guidance_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_guidance_embed.timestep_embedder.linear_2"),
    ("guidance_in.in_layer", "time_guidance_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_guidance_embed.guidance_embedder.linear_2"),
    ("double_stream_modulation_img.lin", "double_stream_modulation_img.linear"),
    ("double_stream_modulation_txt.lin", "double_stream_modulation_txt.linear"),
    ("single_stream_modulation.lin", "single_stream_modulation.linear"),
    ("final_layer.linear", "proj_out"),
    ("final_layer.adaLN_modulation.1", "norm_out.linear"),
)
_SWAPPED = "final_layer.adaLN_modulation.1"
_BLOCKS = (("double_blocks", "transformer_blocks", _DOUBLE), ("single_blocks", "single_transformer_blocks", _SINGLE))
_TO_DIFF = {bfl: dict(table) for bfl, _, table in _BLOCKS}
_FROM_DIFF = {diff: (bfl, {d: (b, i, len(ds)) for b, ds in table for i, d in enumerate(ds)})
              for bfl, diff, table in _BLOCKS}
_DIFF_OF_BFL = {bfl: diff for bfl, diff, _ in _BLOCKS}
_TOP_TO_DIFF = dict(_TOP)
_DIFF_TO_TOP = {d: s for s, d in _TOP}
_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_DIFF_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
_KOHYA_INNER = {bfl: underscored(b for b, _ in table) for bfl, _, table in _BLOCKS}
_KOHYA_TOP = underscored(s for s, _ in _TOP)
_UNDERSCORED_INNER = {diff: underscored(d for _, ds in table for d in ds) for _, diff, table in _BLOCKS}
_UNDERSCORED_TOP = underscored(_DIFF_TO_TOP)


def is_sai_path(path: str) -> bool:
    """A BFL module path (named `sai` as the shared DiT interface names it)."""
    m = _BLOCK.match(path)
    return (m is not None and m[3] in _TO_DIFF[m[1]]) or path in _TOP_TO_DIFF


def is_diffusers_path(path: str) -> bool:
    m = _DIFF_BLOCK.match(path)
    return (m is not None and m[3] in _FROM_DIFF[m[1]][1]) or path in _DIFF_TO_TOP


def diffusers_rows(bfl_path: str, rows: int, in_features: int) -> list[tuple[str, Tensor]]:
    """The diffusers modules a BFL module is made of, each with the BFL rows it holds (in order)."""
    m = _BLOCK.match(bfl_path)
    if m:
        targets = _TO_DIFF[m[1]].get(m[3])
        if targets is None:
            raise KeyError(f"not a Flux.2 module: {bfl_path}")
        prefix = f"{_DIFF_OF_BFL[m[1]]}.{m[2]}."
        if len(targets) == 1:
            return [(prefix + targets[0], torch.arange(rows))]
        if rows % 3:
            raise ValueError(f"{bfl_path}: {rows} rows do not split into q, k, v")
        n = rows // 3
        return [(prefix + t, torch.arange(i * n, (i + 1) * n)) for i, t in enumerate(targets)]
    target = _TOP_TO_DIFF.get(bfl_path)
    if target is None:
        raise KeyError(f"not a Flux.2 module: {bfl_path}")
    return [(target, swap_rows(rows) if bfl_path == _SWAPPED else torch.arange(rows))]


def sai_of(diffusers_path: str) -> tuple[str, int, int]:
    """(BFL path, which piece, how many pieces) of a diffusers Flux.2 transformer module path."""
    m = _DIFF_BLOCK.match(diffusers_path)
    if m:
        bfl, table = _FROM_DIFF[m[1]]
        hit = table.get(m[3])
        if hit is not None:
            inner, i, n = hit
            return f"{bfl}.{m[2]}.{inner}", i, n
    top = _DIFF_TO_TOP.get(diffusers_path)
    if top is not None:
        return top, 0, 1
    raise KeyError(f"not a Flux.2 transformer module: {diffusers_path}")


def fused_rows(bfl_path: str, sizes: dict[int, int], width: int) -> int:
    """A BFL layer's rows from the pieces a file holds: q, k and v are alike, the rest is whole."""
    return 3 * max(sizes.values()) if bfl_path.endswith(".qkv") else sizes[0]


def container(bfl_path: str) -> str:
    """The preset group of a BFL layer: attention (a single block's fused linear1/linear2 too) or mlp
    inside the blocks; every layer outside them (embedders, the shared modulation, the final layer)
    is "embed", adapted by the `full` preset only: musubi-tuner's network adapts the blocks alone."""
    m = _BLOCK.match(bfl_path)
    if not m:
        return "MMDiT.embed"
    return "MMDiT.mlp" if "_mlp." in m[3] else "MMDiT.attn"


def sai_path_of_kohya(name: str) -> str | None:
    """`lora_unet_double_blocks_3_img_attn_qkv` → `double_blocks.3.img_attn.qkv` (None if not Flux.2's)."""
    if not name.startswith(UNET_PREFIX):
        return None
    rest = name[len(UNET_PREFIX):]
    m = re.match(r"^(double_blocks|single_blocks)_(\d+)_(.+)$", rest)
    if m:
        inner = _KOHYA_INNER[m[1]].get(m[3])
        return None if inner is None else f"{m[1]}.{m[2]}.{inner}"
    return _KOHYA_TOP.get(rest)


def diffusers_path_of_underscored(rest: str) -> str | None:
    """`single_transformer_blocks_0_attn_to_out` → `single_transformer_blocks.0.attn.to_out`."""
    m = re.match(r"^(single_transformer_blocks|transformer_blocks)_(\d+)_(.+)$", rest)
    if m:
        inner = _UNDERSCORED_INNER[m[1]].get(m[3])
        return None if inner is None else f"{m[1]}.{m[2]}.{inner}"
    return _UNDERSCORED_TOP.get(rest)


def is_kohya_name(name: str) -> bool:
    return sai_path_of_kohya(name) is not None


def default_kohya_names(double: int, single: int) -> list[str]:
    """The names musubi-tuner's `networks/lora_flux_2.py` makes: every Linear of each
    `DoubleStreamBlock` (8) and `SingleStreamBlock` (2); no text encoder."""
    return ([kohya_name(f"double_blocks.{i}.{b}") for i in range(double) for b, _ in _DOUBLE]
            + [kohya_name(f"single_blocks.{i}.{b}") for i in range(single) for b, _ in _SINGLE])


# ---- whole checkpoints: BFL ↔ diffusers --------------------------------------------------------------------

_NORMS = {"transformer_blocks": {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                                 "attn.norm_added_q": "txt_attn.norm.query_norm",
                                 "attn.norm_added_k": "txt_attn.norm.key_norm"},
          "single_transformer_blocks": {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}}
_NORMS_BACK = {_FROM_DIFF[d][0]: {v: k for k, v in table.items()} for d, table in _NORMS.items()}


def _strip(key: str) -> str:
    return key[len(BFL):] if key.startswith(BFL) else key


def bfl_state_to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The single file's keys (with or without `model.diffusion_model.`) → Flux2Transformer2DModel's,
    at any width (checked against diffusers' converter in the tests)."""
    state = {_strip(k): v for k, v in state.items()}
    weights = {k.rpartition(".")[0]: v for k, v in state.items() if k.endswith(".weight")}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if is_sai_path(module):
            split_rows(out, module, leaf, value, weights[module], diffusers_rows)
            continue
        m = _BLOCK.match(module)
        if m and leaf == "scale" and m[3] in _NORMS_BACK[m[1]]:
            out[f"{_DIFF_OF_BFL[m[1]]}.{m[2]}.{_NORMS_BACK[m[1]][m[3]]}.weight"] = value
            continue
        raise KeyError(f"not a Flux.2 transformer weight: {key}")
    return out


def diffusers_state_to_bfl(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Flux2Transformer2DModel state dict → the single file's keys (as BFL ships them)."""
    out: dict[str, Tensor] = {}
    grouped: dict[tuple[str, str], dict[int, Tensor]] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if is_diffusers_path(module):
            bfl, i, _ = sai_of(module)
            grouped.setdefault((bfl, leaf), {})[i] = value
            continue
        m = _DIFF_BLOCK.match(module)
        if m and m[3] in _NORMS[m[1]] and leaf == "weight":
            out[f"{_FROM_DIFF[m[1]][0]}.{m[2]}.{_NORMS[m[1]][m[3]]}.scale"] = value
            continue
        raise KeyError(f"no BFL name for {key}")
    out.update(stack_pieces(grouped, diffusers_rows))
    return out
