"""The VAE and CLIP text encoders in the original (CompVis/SAI "LDM") single-file layout.

diffusers converts only original → diffusers (`loaders/single_file_utils.py`); these writers are
the exact mirror of its readers, key by key, for the parts many families share: the VAE under
`first_stage_model.` and CLIP / OpenCLIP text encoders under the prefix a family gives. Pure key
and tensor work: no diffusers import.

    VAE            first_stage_model.*                (mid attention: Linear → 1x1 Conv)
    CLIP           <prefix>text_model.*
    OpenCLIP       <prefix>*                          (fused in_proj, resblocks, ln_final)
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from .. import kohya_names as names
from ..families.base import LayoutError

VAE_PREFIX = "first_stage_model."


# --- VAE -------------------------------------------------------------------------------------

_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_attention(rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    for src, dst in _VAE_ATTN.items():
        if rest.startswith(src + "."):
            param = rest[len(src) + 1:]
            if dst != "norm" and param == "weight" and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # Linear → 1x1 Conv2d
            return f"{dst}.{param}", value
    raise LayoutError(f"VAE attention tensor {rest} has no original-layout name")


def vae_key_to_original(key: str, value: torch.Tensor, num_up_blocks: int) -> tuple[str, torch.Tensor]:
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key, value
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        raise LayoutError(f"VAE tensor {key} has no original-layout name")
    head, _, param = rest.partition(".")
    if head in ("conv_in", "conv_out", "conv_norm_out"):
        return f"{side}.{_VAE_TOP.get(head, head)}.{param}", value
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$", rest)
    if m:
        kind, i, sub, j, tail = m[1], int(m[2]), m[3], int(m[4]), m[5]
        idx = i if kind == "down" else num_up_blocks - 1 - i  # the decoder counts its up blocks backwards
        if sub == "resnets":
            return f"{side}.{kind}.{idx}.block.{j}.{tail.replace('conv_shortcut', 'nin_shortcut')}", value
        return f"{side}.{kind}.{idx}.{kind}sample.{tail}", value
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", rest)
    if m:
        if m[1] == "resnets":
            return f"{side}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", value
        name, value = _vae_attention(m[3], value)
        return f"{side}.mid.attn_{int(m[2]) + 1}.{name}", value
    raise LayoutError(f"VAE tensor {key} has no original-layout name")


def vae_to_original(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    n_up = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        new, value = vae_key_to_original(key, value, n_up)
        out[VAE_PREFIX + new] = value
    return out


# --- text encoders ---------------------------------------------------------------------------

def _text_model_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5's CLIPTextModel saves without `text_model.`; the original files spell it."""
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        out[key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key] = value
    return out


def clip_to_original(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP-L (SD1, SDXL TE1): the original layout is the transformers layout under a prefix."""
    out = {}
    for key, value in _text_model_keys(state).items():
        if key.startswith("text_projection."):
            raise LayoutError(f"text encoder tensor {key} has no place in the CLIP-L original layout")
        out[prefix + key] = value
    return out


_OPEN_CLIP_TOP = {
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def open_clip_to_original(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP (SD2 TE, SDXL TE2): q/k/v fused into in_proj, `resblocks`, text_projection as x @ P."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in _text_model_keys(state).items():
        if key in _OPEN_CLIP_TOP:
            out[prefix + _OPEN_CLIP_TOP[key]] = value
            continue
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()  # nn.Linear weight [out, in] → [in, out]
            continue
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if not m:
            raise LayoutError(f"text encoder tensor {key} has no place in the OpenCLIP original layout")
        layer, module, param = int(m[1]), m[2], m[3]
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((layer, param), {})[module[-6]] = value
            continue
        if module not in _OPEN_CLIP_LAYER:
            raise LayoutError(f"text encoder tensor {key} has no place in the OpenCLIP original layout")
        out[f"{prefix}transformer.resblocks.{layer}.{_OPEN_CLIP_LAYER[module]}.{param}"] = value
    for (layer, param), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise LayoutError(f"text encoder layer {layer} lacks one of q/k/v {param}")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{param}"] = fused
    return out


_OPEN_CLIP_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # in_proj's thirds, in order


def te_weight_key(kind: str, prefix: str, path: str) -> tuple[tuple[str, ...], int | None]:
    """Where the weight of one text-encoder Linear (transformers module `path`) lies in the original
    layout, for reading it alone: (the tensor names it may have, first found wins; which third of
    a fused OpenCLIP q/k/v `in_proj_weight` it is, or None for the whole tensor). The same maps
    as the writers above, read backwards."""
    path = names.te_path_for_name(path)
    if kind == "clip":  # some SD1 files spell the CLIP keys without `text_model.` (_with_text_model)
        return (f"{prefix}{path}.weight", f"{prefix}{path.removeprefix('text_model.')}.weight"), None
    m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)$", path)
    if not m:
        raise LayoutError(f"text encoder layer {path} has no place in the OpenCLIP original layout")
    layer, module = int(m[1]), m[2]
    block = f"{prefix}transformer.resblocks.{layer}."
    if module in _OPEN_CLIP_QKV:
        return (block + "attn.in_proj_weight",), _OPEN_CLIP_QKV.index(module)
    if module not in _OPEN_CLIP_LAYER:
        raise LayoutError(f"text encoder layer {path} has no place in the OpenCLIP original layout")
    return (f"{block}{_OPEN_CLIP_LAYER[module]}.weight",), None
