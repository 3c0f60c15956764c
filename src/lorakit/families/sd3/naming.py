"""SD 3.x (MMDiT) module names: SAI's, which kohya and ComfyUI use, and diffusers'.

SAI keeps q/k/v of each stream as one `attn.qkv` layer and calls the streams `x_block` (image)
and `context_block` (text); diffusers splits q/k/v (`attn.to_q`…, `attn.add_q_proj`… for the
context) and, on the last block (whose context stream stops after attention) and on the final
layer, stores the two adaLN halves in the other order (scale, shift instead of shift, scale).
A LoRA's `up` rows follow the weight's rows, so each diffusers module is a row group of one SAI
module: `diffusers_rows` gives it.

Why a table here rather than diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`: that
function converts whole weights of a complete checkpoint, while a LoRA file names only some
modules and needs the row mapping itself. `tests/test_sd3_formats.py` runs diffusers' converter
on a checkpoint whose rows are numbered and checks this table against it, row by row.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..dit.naming import UNET_PREFIX, kohya_name, split_rows, stack_pieces, swap_rows, underscored


# SAI path inside a joint block → diffusers path(s) inside a transformer block; "qkv" splits in three
_BLOCK = (
    ("x_block.attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("context_block.attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("x_block.attn2.qkv", ("attn2.to_q", "attn2.to_k", "attn2.to_v")),
    ("x_block.attn.proj", ("attn.to_out.0",)),
    ("context_block.attn.proj", ("attn.to_add_out",)),
    ("x_block.attn2.proj", ("attn2.to_out.0",)),
    ("x_block.mlp.fc1", ("ff.net.0.proj",)),
    ("x_block.mlp.fc2", ("ff.net.2",)),
    ("context_block.mlp.fc1", ("ff_context.net.0.proj",)),
    ("context_block.mlp.fc2", ("ff_context.net.2",)),
    ("x_block.adaLN_modulation.1", ("norm1.linear",)),
    ("context_block.adaLN_modulation.1", ("norm1_context.linear",)),
)
_TOP = (
    ("context_embedder", "context_embedder"),
    ("x_embedder.proj", "pos_embed.proj"),
    ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
    ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
    ("final_layer.adaLN_modulation.1", "norm_out.linear"),
)
_BLOCK_TO_DIFF = dict(_BLOCK)
_DIFF_TO_BLOCK = {d: (sai, i, len(ds)) for sai, ds in _BLOCK for i, d in enumerate(ds)}
_TOP_TO_DIFF = dict(_TOP)
_DIFF_TO_TOP = {d: s for s, d in _TOP}
_SAI_BLOCK = re.compile(r"^joint_blocks\.(\d+)\.(.+)$")
_DIFF_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")

# kohya spells the SAI path with "_" for "."; the pieces that contain "_" themselves:
_KOHYA_BLOCK = underscored(sai for sai, _ in _BLOCK)
_KOHYA_TOP = underscored(sai for sai, _ in _TOP)
# OneTrainer spells the diffusers path that way
_UNDERSCORED_DIFF_BLOCK = underscored(_DIFF_TO_BLOCK)
_UNDERSCORED_DIFF_TOP = underscored(_DIFF_TO_TOP)


def is_sai_path(path: str) -> bool:
    m = _SAI_BLOCK.match(path)
    return (m is not None and m[2] in _BLOCK_TO_DIFF) or path in _TOP_TO_DIFF


def is_diffusers_path(path: str) -> bool:
    m = _DIFF_BLOCK.match(path)
    return (m is not None and m[2] in _DIFF_TO_BLOCK) or path in _DIFF_TO_TOP


def _swapped(sai_inner: str, rows: int, in_features: int) -> bool:
    """Whether diffusers stores this adaLN's halves the other way round: the final layer, and the
    last block's context stream (the one whose adaLN has 2 chunks instead of 6)."""
    if sai_inner == "final_layer.adaLN_modulation.1":
        return True
    return sai_inner == "context_block.adaLN_modulation.1" and rows == 2 * in_features


def diffusers_rows(sai_path: str, rows: int, in_features: int) -> list[tuple[str, Tensor]]:
    """The diffusers modules an SAI module is made of, each with the SAI rows it holds (in order).

    `rows` and `in_features` are the SAI layer's weight shape (a LoRA's up rows, down columns).
    """
    m = _SAI_BLOCK.match(sai_path)
    if m:
        block, inner = m[1], m[2]
        targets = _BLOCK_TO_DIFF.get(inner)
        if targets is None:
            raise KeyError(f"not an SD3 module: {sai_path}")
        prefix = f"transformer_blocks.{block}."
        if len(targets) == 3:
            if rows % 3:
                raise ValueError(f"{sai_path}: {rows} rows do not split into q, k, v")
            d = rows // 3
            return [(prefix + t, torch.arange(i * d, (i + 1) * d)) for i, t in enumerate(targets)]
        idx = swap_rows(rows) if _swapped(inner, rows, in_features) else torch.arange(rows)
        return [(prefix + targets[0], idx)]
    target = _TOP_TO_DIFF.get(sai_path)
    if target is None:
        raise KeyError(f"not an SD3 module: {sai_path}")
    idx = swap_rows(rows) if _swapped(sai_path, rows, in_features) else torch.arange(rows)
    return [(target, idx)]


def sai_of(diffusers_path: str) -> tuple[str, int, int]:
    """(SAI path, which piece, how many pieces) of a diffusers transformer module path."""
    m = _DIFF_BLOCK.match(diffusers_path)
    if m:
        hit = _DIFF_TO_BLOCK.get(m[2])
        if hit is not None:
            sai, i, n = hit
            return f"joint_blocks.{m[1]}.{sai}", i, n
    top = _DIFF_TO_TOP.get(diffusers_path)
    if top is not None:
        return top, 0, 1
    raise KeyError(f"not an SD3 transformer module: {diffusers_path}")


_KIND = {"qkv": "attn", "proj": "attn", "fc1": "mlp", "fc2": "mlp", "1": "adaLN"}


def container(sai_path: str) -> str:
    """The preset group of an SAI layer: attention, mlp, adaLN (modulation) or embed."""
    if not sai_path.startswith("joint_blocks."):
        return "MMDiT.embed"
    return "MMDiT." + _KIND[sai_path.rsplit(".", 1)[1]]


def sai_path_of_kohya(name: str) -> str | None:
    """`lora_unet_joint_blocks_3_x_block_attn_qkv` → `joint_blocks.3.x_block.attn.qkv` (None if not SD3)."""
    if not name.startswith(UNET_PREFIX):
        return None
    rest = name[len(UNET_PREFIX):]
    m = re.match(r"^joint_blocks_(\d+)_(.+)$", rest)
    if m:
        inner = _KOHYA_BLOCK.get(m[2])
        return None if inner is None else f"joint_blocks.{m[1]}.{inner}"
    return _KOHYA_TOP.get(rest)


def diffusers_path_of_underscored(rest: str) -> str | None:
    """OneTrainer's `transformer_blocks_0_attn_to_q` → `transformer_blocks.0.attn.to_q`."""
    m = re.match(r"^transformer_blocks_(\d+)_(.+)$", rest)
    if m:
        inner = _UNDERSCORED_DIFF_BLOCK.get(m[2])
        return None if inner is None else f"transformer_blocks.{m[1]}.{inner}"
    return _UNDERSCORED_DIFF_TOP.get(rest)


def is_sd3_kohya_name(name: str) -> bool:
    return sai_path_of_kohya(name) is not None


# ---- real-size architectures: the kohya names sd-scripts' default network creates ----------------------

def default_kohya_names(num_layers: int, dual_attention_layers=(), te_layers=(12, 32)) -> list[str]:
    """Every name sd-scripts' `networks/lora_sd3.py` makes by default: each Linear in every
    `SingleDiTBlock` (both streams of every joint block; the last context stream has only qkv and
    adaLN) and the CLIP-L / CLIP-G self-attention and MLP layers (T5 only with `train_t5xxl`)."""
    names = []
    for i in range(num_layers):
        last = i == num_layers - 1
        for sai, _ in _BLOCK:
            stream = sai.split(".")[0]
            if ".attn2." in sai and i not in dual_attention_layers:
                continue
            if last and stream == "context_block" and not sai.endswith(("attn.qkv", "adaLN_modulation.1")):
                continue
            names.append(kohya_name(f"joint_blocks.{i}.{sai}"))
    for te, layers in zip(("lora_te1", "lora_te2"), te_layers):
        for j in range(layers):
            for sub in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                        "mlp_fc1", "mlp_fc2"):
                names.append(f"{te}_text_model_encoder_layers_{j}_{sub}")
    return names


# ---- whole checkpoints: diffusers → SAI (the inverse of diffusers' single-file converter) ----------------

_NORMS = {"attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
          "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
          "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k"}


def diffusers_state_to_sai(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An SD3Transformer2DModel state dict → SAI's MMDiT keys (without `model.diffusion_model.`).

    diffusers can read SAI single files (`from_single_file`) but not write them; a merged model
    saved as an SAI file needs this direction. Row groups come from `diffusers_rows`, so q/k/v are
    stacked and the swapped adaLN halves put back.
    """
    out: dict[str, Tensor] = {}
    grouped: dict[tuple[str, str], dict[int, Tensor]] = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if key == "pos_embed.pos_embed":
            out["pos_embed"] = value
            continue
        if is_diffusers_path(module):
            sai, i, _ = sai_of(module)
            grouped.setdefault((sai, leaf), {})[i] = value
            continue
        m = _DIFF_BLOCK.match(module)
        if m and m[2] in _NORMS:
            out[f"joint_blocks.{m[1]}.{_NORMS[m[2]]}.{leaf}"] = value
            continue
        raise KeyError(f"no SAI name for {key}")
    out.update(stack_pieces(grouped, diffusers_rows))
    return out


_NORMS_BACK = {v: k for k, v in _NORMS.items()}


def sai_state_to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """SAI's MMDiT keys (without `model.diffusion_model.`) → SD3Transformer2DModel's, at any width and
    for any subset holding whole modules (a streamed load converts a block at a time; diffusers'
    converter wants the whole state dict). Rows come from `diffusers_rows`; a leaf other than weight
    and bias (an fp8 weight's row scale) is split with the rows as a bias is; GGUF blocks (one row
    of them per weight row) split as the weights do."""
    weights = {k[:-len(".weight")]: v for k, v in state.items() if k.endswith(".weight")}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "pos_embed":
            out["pos_embed.pos_embed"] = value
            continue
        module, _, leaf = key.rpartition(".")
        if is_sai_path(module):
            split_rows(out, module, leaf, value, weights[module], diffusers_rows)
            continue
        m = _SAI_BLOCK.match(module)
        if m and m[2] in _NORMS_BACK:
            out[f"transformer_blocks.{m[1]}.{_NORMS_BACK[m[2]]}.{leaf}"] = value
            continue
        raise KeyError(f"not an SD3 transformer weight: {key}")
    return out
