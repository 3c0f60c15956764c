"""Flux.1 transformer module names: BFL's (which sd-scripts and ComfyUI use) and diffusers'.

BFL keeps q/k/v of each stream of a double block as one `img_attn.qkv` / `txt_attn.qkv` layer,
and a single block's q, k, v and MLP input as one `linear1` (rows q | k | v | mlp, the first three
of the hidden width); diffusers splits them (`attn.to_q`…, `attn.add_q_proj`…, `proj_mlp`) and
stores the final adaLN halves the other way round (scale, shift). Each diffusers module is a row
group of one BFL module: `diffusers_rows` gives it, sized from the layer itself so any width works.

Why a table here rather than diffusers' `convert_flux_transformer_checkpoint_to_diffusers`: that
converts whole weights of a complete checkpoint with the width fixed at 3072, while a LoRA file
names only some modules and tiny test models are narrower. `tests/test_flux_formats.py` checks
this table against diffusers' converter row by row.

The functions mirror SD3's `naming` (same names), so `dit/targets.py` and the file layouts take
either module as their naming.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..dit.naming import UNET_PREFIX, kohya_name, split_rows, stack_pieces, swap_rows, underscored


# BFL path inside a block → diffusers path(s) inside the matching diffusers block
_DOUBLE = (
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("img_attn.proj", ("attn.to_out.0",)),
    ("txt_attn.proj", ("attn.to_add_out",)),
    ("img_mlp.0", ("ff.net.0.proj",)),
    ("img_mlp.2", ("ff.net.2",)),
    ("txt_mlp.0", ("ff_context.net.0.proj",)),
    ("txt_mlp.2", ("ff_context.net.2",)),
    ("img_mod.lin", ("norm1.linear",)),
    ("txt_mod.lin", ("norm1_context.linear",)),
)
_SINGLE = (
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ("linear2", ("proj_out",)),
    ("modulation.lin", ("norm.linear",)),
)
_TOP = (
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
    ("final_layer.adaLN_modulation.1", "norm_out.linear"),
)
_SWAPPED = "final_layer.adaLN_modulation.1"
# (BFL block prefix, diffusers block prefix, inner table)
_BLOCKS = (("double_blocks", "transformer_blocks", _DOUBLE), ("single_blocks", "single_transformer_blocks", _SINGLE))
_TO_DIFF = {bfl: dict(table) for bfl, _, table in _BLOCKS}
_FROM_DIFF = {diff: (bfl, {d: (b, i, len(ds)) for b, ds in table for i, d in enumerate(ds)})
              for bfl, diff, table in _BLOCKS}
_DIFF_OF_BFL = {bfl: diff for bfl, diff, _ in _BLOCKS}
_TOP_TO_DIFF = dict(_TOP)
_DIFF_TO_TOP = {d: s for s, d in _TOP}
_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_DIFF_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")
# kohya spells the BFL path with "_" for "."; OneTrainer spells the diffusers path that way
_KOHYA_INNER = {bfl: underscored(b for b, _ in table) for bfl, _, table in _BLOCKS}
_KOHYA_TOP = underscored(s for s, _ in _TOP)
_UNDERSCORED_INNER = {diff: underscored(d for _, ds in table for d in ds) for _, diff, table in _BLOCKS}
_UNDERSCORED_TOP = underscored(_DIFF_TO_TOP)


def is_sai_path(path: str) -> bool:
    """A BFL module path (named `sai` like SD3's so both namings share one interface)."""
    m = _BLOCK.match(path)
    return (m is not None and m[3] in _TO_DIFF[m[1]]) or path in _TOP_TO_DIFF


def is_diffusers_path(path: str) -> bool:
    m = _DIFF_BLOCK.match(path)
    return (m is not None and m[3] in _FROM_DIFF[m[1]][1]) or path in _DIFF_TO_TOP


def diffusers_rows(bfl_path: str, rows: int, in_features: int) -> list[tuple[str, Tensor]]:
    """The diffusers modules a BFL module is made of, each with the BFL rows it holds (in order).

    `rows`, `in_features`: the BFL layer's weight shape. A single block's `linear1` takes the
    hidden state, so q, k and v are `in_features` rows each and the MLP the rest.
    """
    m = _BLOCK.match(bfl_path)
    if m:
        kind, block, inner = m[1], m[2], m[3]
        targets = _TO_DIFF[kind].get(inner)
        if targets is None:
            raise KeyError(f"not a Flux module: {bfl_path}")
        prefix = f"{_DIFF_OF_BFL[kind]}.{block}."
        if len(targets) == 3:
            if rows % 3:
                raise ValueError(f"{bfl_path}: {rows} rows do not split into q, k, v")
            sizes = [rows // 3] * 3
        elif len(targets) == 4:
            if rows <= 3 * in_features:
                raise ValueError(f"{bfl_path}: {rows} rows hold no MLP after q, k, v of width {in_features}")
            sizes = [in_features] * 3 + [rows - 3 * in_features]
        else:
            return [(prefix + targets[0], torch.arange(rows))]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [(prefix + t, torch.arange(s, s + n)) for t, s, n in zip(targets, starts, sizes)]
    target = _TOP_TO_DIFF.get(bfl_path)
    if target is None:
        raise KeyError(f"not a Flux module: {bfl_path}")
    return [(target, swap_rows(rows) if bfl_path == _SWAPPED else torch.arange(rows))]


def sai_of(diffusers_path: str) -> tuple[str, int, int]:
    """(BFL path, which piece, how many pieces) of a diffusers Flux transformer module path."""
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
    raise KeyError(f"not a Flux transformer module: {diffusers_path}")


def fused_rows(bfl_path: str, sizes: dict[int, int], width: int) -> int:
    """A BFL layer's row count from the pieces a LoRA file holds ({piece: rows}): q, k and v are the
    hidden width each; a single block's MLP rows come from its `proj_mlp` piece, or are Flux.1's
    4 × width when the file adapts q/k/v only (diffusers' training script does) and leaves the MLP
    rows zero."""
    if bfl_path.endswith(".linear1"):
        return 3 * width + sizes.get(3, 4 * width)
    if bfl_path.endswith(".qkv"):
        return 3 * max(sizes.values())
    return sizes[0]


def container(bfl_path: str) -> str:
    """The preset group of a BFL layer: attention (a single block's linear1/linear2 included: they
    are its attention projections, fused with the MLP), mlp, adaLN (modulation) or embed."""
    m = _BLOCK.match(bfl_path)
    if not m:
        return "MMDiT.embed"
    inner = m[3]
    if inner.endswith("mod.lin") or inner == "modulation.lin":
        return "MMDiT.adaLN"
    if "_mlp." in inner:
        return "MMDiT.mlp"
    return "MMDiT.attn"


def sai_path_of_kohya(name: str) -> str | None:
    """`lora_unet_double_blocks_3_img_attn_qkv` → `double_blocks.3.img_attn.qkv` (None if not Flux)."""
    if not name.startswith(UNET_PREFIX):
        return None
    rest = name[len(UNET_PREFIX):]
    m = re.match(r"^(double_blocks|single_blocks)_(\d+)_(.+)$", rest)
    if m:
        inner = _KOHYA_INNER[m[1]].get(m[3])
        return None if inner is None else f"{m[1]}.{m[2]}.{inner}"
    return _KOHYA_TOP.get(rest)


def diffusers_path_of_underscored(rest: str) -> str | None:
    """OneTrainer's `single_transformer_blocks_0_attn_to_q` → `single_transformer_blocks.0.attn.to_q`."""
    m = re.match(r"^(single_transformer_blocks|transformer_blocks)_(\d+)_(.+)$", rest)
    if m:
        inner = _UNDERSCORED_INNER[m[1]].get(m[3])
        return None if inner is None else f"{m[1]}.{m[2]}.{inner}"
    return _UNDERSCORED_TOP.get(rest)


def is_kohya_name(name: str) -> bool:
    return sai_path_of_kohya(name) is not None


# ---- real-size architectures: the names sd-scripts' default network creates -----------------------------

def default_kohya_names(double: int = 19, single: int = 38, clip_layers: int = 12, t5_layers: int = 0) -> list[str]:
    """Every name sd-scripts' `networks/lora_flux.py` makes by default: each Linear in every
    `DoubleStreamBlock` (10) and `SingleStreamBlock` (3), CLIP-L's self-attention and MLP layers
    (`lora_te1_`), and T5's (`lora_te3_`, only with `train_t5xxl`: q, k, v, o, wi_0, wi_1, wo)."""
    names = [kohya_name(f"double_blocks.{i}.{b}") for i in range(double) for b, _ in _DOUBLE]
    names += [kohya_name(f"single_blocks.{i}.{b}") for i in range(single) for b, _ in _SINGLE]
    for j in range(clip_layers):
        for sub in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                    "mlp_fc1", "mlp_fc2"):
            names.append(f"lora_te1_text_model_encoder_layers_{j}_{sub}")
    for j in range(t5_layers):
        for sub in ("layer_0_SelfAttention_q", "layer_0_SelfAttention_k", "layer_0_SelfAttention_v",
                    "layer_0_SelfAttention_o", "layer_1_DenseReluDense_wi_0", "layer_1_DenseReluDense_wi_1",
                    "layer_1_DenseReluDense_wo"):
            names.append(f"lora_te3_encoder_block_{j}_{sub}")
    return names


# ---- whole checkpoints: BFL ↔ diffusers --------------------------------------------------------------------

_NORMS_DOUBLE = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                 "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
_NORMS_SINGLE = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
_NORMS = {"transformer_blocks": _NORMS_DOUBLE, "single_transformer_blocks": _NORMS_SINGLE}
_NORMS_BACK = {"double_blocks": {v: k for k, v in _NORMS_DOUBLE.items()},
               "single_blocks": {v: k for k, v in _NORMS_SINGLE.items()}}


def diffusers_state_to_bfl(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A FluxTransformer2DModel state dict → BFL's keys (without `model.diffusion_model.`).

    diffusers reads BFL files (`from_single_file`) but cannot write them; a merged model saved as
    a BFL file needs this direction. Row groups come from `diffusers_rows`.
    """
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


def bfl_state_to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """BFL's transformer keys (with or without `model.diffusion_model.`) → FluxTransformer2DModel's.

    diffusers' own converter fixes the width at 3072; this one sizes the pieces from the weights,
    so narrow models (tests) load the same way.
    """
    out: dict[str, Tensor] = {}
    weights = {}
    for key, value in state.items():
        key = key[len("model.diffusion_model."):] if key.startswith("model.diffusion_model.") else key
        module, _, leaf = key.rpartition(".")
        if leaf == "weight":
            weights[module] = value
    for key, value in state.items():
        key = key[len("model.diffusion_model."):] if key.startswith("model.diffusion_model.") else key
        module, _, leaf = key.rpartition(".")
        if is_sai_path(module):
            split_rows(out, module, leaf, value, weights[module], diffusers_rows)
            continue
        m = _BLOCK.match(module)
        if m and leaf == "scale" and m[3] in _NORMS_BACK[m[1]]:
            out[f"{_DIFF_OF_BFL[m[1]]}.{m[2]}.{_NORMS_BACK[m[1]][m[3]]}.weight"] = value
            continue
        raise KeyError(f"not a Flux transformer weight: {key}")
    return out
