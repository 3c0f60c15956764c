"""AUTOMATIC1111's LoRA key rules (its built-in Lora extension).

Source read: AUTOMATIC1111/stable-diffusion-webui extensions-builtin/Lora/networks.py
(`convert_diffusers_name_to_compvis`, `assign_network_names_to_compvis_modules`, `load_network`,
`network_apply_weights`; the v1.10 text of load_network, its `module_types` list and
`suffix_conversion`), network_lora.py @ ea903819cb7e1d9a1b82ff93d5be60c3d7a8c9c6, network.py @
f2844bd024ff3cf7ee712153a514afd9085980db (`calc_scale`, `detect_version`), network_lokr.py @
fe89b098394aab3339078eb992f796a4aa1a32b6, network_oft.py @ 3772a82a70769fe1aac884a75bf5a3313fb83328,
and network_hada.py, network_ia3.py, network_full.py, network_norm.py, network_glora.py as Forge ships
A1111's copies (lllyasviel/stable-diffusion-webui-forge @ dfdcbab685e57677014f05a3309b48cc87383167
packages_3rdparty/webui_lora_collection/). Forge itself loads through ComfyUI's key map (forge.py).

The rules, as the source has them:
- A key is split at its first dot: `NAME.rest`. NAME is translated from kohya's diffusers spelling
  to the LDM one by fixed patterns (down/mid/up blocks, resnets' conv1 → in_layers_2 …,
  downsamplers → op, `lora_te_text_model_encoder_layers_N` → the SD1 CLIP or, on SD2, the
  OpenCLIP `model_transformer_resblocks_N` names, `lora_te2_…` → `1_model_transformer_resblocks_N`)
  and looked up among the names of every module of the LDM model (`diffusion_model_…`,
  `transformer_text_model_…`, on SDXL `0_…`/`1_…`); `_q_proj`/`_k_proj`/`_v_proj` may name the
  fused OpenCLIP attention; then `lora_unet` → `diffusion_model` (SDXL's SAI names), and
  `lora_te1_text_model` → `0_transformer_text_model` or `transformer_text_model`. Anything else
  (diffusers/PEFT keys: NAME is `unet`, `text_encoder`) fails to match, logged only at debug level.
- Each matched module goes to the first module type, in `module_types` order, whose keys it holds:
  LoRA (up+down or lora_A+lora_B), LoHa (w1_a, w1_b, w2_a, w2_b), IA3 (`weight`; it then reads
  `on_input`), LoKr (w1 or w1_a+w1_b, and w2 or w2_a+w2_b), full (`diff`), norm (`w_norm` and
  `b_norm`), GLoRA (a1/a2/b1/b2 `.weight` and `alpha`), OFT (`oft_blocks`, kohya's, which reads
  `alpha`; or LyCORIS' `oft_diag`). None, or a key the chosen type reads missing (IA3 without
  `on_input`, kohya OFT without `alpha`): load_network raises and the whole LoRA is not loaded.
- kohya's OFT names (`oft_unet_…`) are tried as `diffusion_model_…` after the other fallbacks.
- An OpenCLIP attention (SD2's text encoder, SDXL's second) is changed only when q, k, v and
  out_proj of that layer are all there.
- Strength (`calc_scale`): a `scale` key, else alpha / dim where the type sets a dim, else 1.0. dim
  is lora_down's rows (LoRA), hada_w1_b's (LoHa), lokr_w2_b's, else lokr_w1_b's (LoKr; with full w1
  and w2 none, so alpha is ignored); full, IA3, norm and GLoRA set none; OFT fixes its scale at 1.
- The Lora tab lists a file by its metadata's version (`ss_base_model_version` sdxl_… → SDXL,
  `ss_v2` True → SD2, other metadata → SD1, none → unknown) and hides other versions' files.
"""

from __future__ import annotations

import re

from .filekeys import FileKeys
from .outcome import Outcome, us
from .universe import Universe

NAME = "A1111"
SOURCE = "AUTOMATIC1111/stable-diffusion-webui v1.10 extensions-builtin/Lora/networks.py, network_lora.py@ea90381"

_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
           "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}
_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def runs(spec) -> bool:
    """A1111 runs SD 1.x, 2.x and XL UNets (its SD3 path is not modelled here)."""
    return spec.denoiser == "unet"


def _open_clip(rest: str) -> str:
    if "mlp_fc1" in rest:
        return rest.replace("mlp_fc1", "mlp_c_fc")
    if "mlp_fc2" in rest:
        return rest.replace("mlp_fc2", "mlp_c_proj")
    return rest.replace("self_attn", "attn")


def to_compvis(name: str, is_sd2: bool) -> str:
    """networks.convert_diffusers_name_to_compvis, as its patterns read."""
    def match(pattern):
        return re.match(pattern, name)

    if m := match(r"lora_unet_conv_in(.*)"):
        return f"diffusion_model_input_blocks_0_0{m[1]}"
    if m := match(r"lora_unet_conv_out(.*)"):
        return f"diffusion_model_out_2{m[1]}"
    if m := match(r"lora_unet_time_embedding_linear_(\d+)(.*)"):
        return f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"
    if m := match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        suffix = _RESNET.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        block = 1 + int(m[1]) * 3 + int(m[3])
        return f"diffusion_model_input_blocks_{block}_{1 if m[2] == 'attentions' else 0}_{suffix}"
    if m := match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)"):
        suffix = _RESNET.get(m[3], m[3]) if m[1] == "resnets" else m[3]
        return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{suffix}"
    if m := match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        suffix = _RESNET.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{suffix}"
    if m := match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv"):
        return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
    if m := match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv"):
        b = int(m[1])
        return f"diffusion_model_output_blocks_{2 + b * 3}_{2 if b > 0 else 1}_conv"
    if m := match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)"):
        if is_sd2:
            return f"model_transformer_resblocks_{m[1]}_{_open_clip(m[2])}"
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    if m := match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)"):
        return f"1_model_transformer_resblocks_{m[1]}_{_open_clip(m[2])}"
    return name


def layer_names(u: Universe) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """({A1111 module name: (part, live path)} of the adaptable layers, {member name: its fused
    OpenCLIP attention's name} for the q/k/v/out_proj members of such attentions)."""
    spec, layout = u.spec, u.layout
    several = len(spec.te_parts) > 1
    names: dict[str, tuple[str, str]] = {}
    fused: dict[str, str] = {}
    for layer in u.layers:
        try:
            keys, _ = spec.original_weight_keys(layer.part, layer.path, layout)
        except (NotImplementedError, KeyError, ValueError):
            continue
        key = keys[0]
        if key.startswith("model."):
            module = key[len("model."):]
        elif key.startswith("conditioner.embedders."):
            index, _, module = key[len("conditioner.embedders."):].partition(".")
            module = f"{index}.{module}" if several else module
        elif key.startswith("cond_stage_model."):
            module = key[len("cond_stage_model."):]
        else:
            continue
        where = (layer.part, _live(u, layer))
        if module.endswith(".in_proj_weight"):  # fused OpenCLIP attention: one module for q, k and v
            attention = us(module[: -len(".in_proj_weight")])
            member = f"{attention}_{layer.path.rsplit('.', 1)[-1]}"  # …_attn_q_proj
            names[member] = where
            fused[member] = attention
            names[attention] = ("", "")
            continue
        name = us(module[: -len(".weight")] if module.endswith(".weight") else module)
        names[name] = where
        if name.endswith("_attn_out_proj"):
            fused[name] = name[: -len("_out_proj")]
    fused = {k: v for k, v in fused.items() if v in names}
    return names, fused


def _live(u: Universe, layer) -> str:
    model = u.components.get(u.spec.text_encoders[u.te_index(layer.part)]) if layer.part != "unet" else None
    if model is not None and layer.path.startswith("text_model.") and not hasattr(model, "text_model"):
        return layer.path[len("text_model."):]
    return layer.path


def _module_type(parts: set[str]) -> str | None:
    """The first of networks.py's `module_types` (in its order) whose create_module accepts the keys."""
    if {"lora_up.weight", "lora_down.weight"} <= parts or {"lora_A.weight", "lora_B.weight"} <= parts:
        return "lora"
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= parts:
        return "hada"
    if "weight" in parts:
        return "ia3"
    one = "lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= parts
    two = "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= parts
    if one and two:
        return "lokr"
    if "diff" in parts:
        return "full"
    if {"w_norm", "b_norm"} <= parts:
        return "norm"
    if {"a1.weight", "a2.weight", "alpha", "b1.weight", "b2.weight"} <= parts:
        return "glora"
    if "oft_blocks" in parts or "oft_diag" in parts:
        return "oft"
    return None


# keys the module's constructor then reads unconditionally: without them it raises
_READS = {"ia3": ("on_input",), "oft": ("alpha",)}

# the key whose rows are the module's dim, first choice first (LoKr sets w1_b's, then w2_b's over it)
_DIM = {"lora": ("lora_down.weight", "lora_A.weight"), "hada": ("hada_w1_b",), "lokr": ("lokr_w2_b", "lokr_w1_b")}


def _missing(kind: str, parts: set[str]) -> str | None:
    if kind == "oft" and "oft_blocks" not in parts:
        return None  # LyCORIS' oft_diag reads no alpha
    return next((k for k in _READS.get(kind, ()) if k not in parts), None)


def _strength(fk: FileKeys, kind: str, w: dict[str, str]) -> float:
    """network.py's calc_scale with the dim each module type sets."""
    if kind == "oft":
        return 1.0
    if "scale" in w:
        return float(fk.tensor(w["scale"]))
    rank = next((fk.shapes[w[p]][0] for p in _DIM.get(kind, ()) if p in w), None)
    alpha = fk.alphas.get(w.get("alpha", ""))
    return 1.0 if alpha is None or not rank else alpha / rank


def load(fk: FileKeys, u: Universe) -> Outcome:
    out = Outcome()
    names, fused = layer_names(u)
    is_sd2 = any(n.startswith("model_transformer_resblocks_") for n in names)
    matched: dict[str, dict[str, str]] = {}
    for key in fk.shapes:
        stem, _, part = key.partition(".")
        name = to_compvis(stem, is_sd2)
        found = name in names
        if not found and (m := _X_PROJ.match(name)):
            found = m[1] in names
        if not found and "lora_unet" in stem:
            name = stem.replace("lora_unet", "diffusion_model")
            found = name in names
        elif not found and "lora_te1_text_model" in stem:
            name = stem.replace("lora_te1_text_model", "0_transformer_text_model")
            found = name in names
            if not found:
                name = stem.replace("lora_te1_text_model", "transformer_text_model")
                found = name in names
        elif not found and "oft_unet" in stem:
            name = stem.replace("oft_unet", "diffusion_model")
            found = name in names
        if not found:
            out.skipped.append((key, "does not match an A1111 layer name"))
            continue
        matched.setdefault(name, {})[part] = key
    modules, kinds = {}, {}
    for name, w in matched.items():
        kind = _module_type(set(w))
        stem = next(iter(w.values())).partition('.')[0]
        if kind is None:
            out.refused = (f"{stem} holds {', '.join(sorted(w))}, which no module type accepts: A1111 raises "
                           "and loads none of the file")
            return out
        missing = _missing(kind, set(w))
        if missing:
            out.refused = (f"{stem} is read as {kind} and has no {missing}: A1111 raises and loads none of the file")
            return out
        modules[name], kinds[name] = w, kind
    groups: dict[str, set[str]] = {}
    for name in modules:
        if name in fused:
            groups.setdefault(fused[name], set()).add(name)
    for name, w in modules.items():
        if name in fused and len(groups[fused[name]]) < 4:
            out.skip(w.values(), "an OpenCLIP attention changes only with all of q, k, v and out_proj")
            continue
        out.applied[next(iter(w.values())).partition(".")[0]] = _strength(fk, kinds[name], w)
    hidden = _hidden(fk.metadata, u.spec)
    if hidden:
        out.notes.append(hidden)
    return out


def _hidden(metadata: dict, spec) -> str | None:
    """Whether the Lora tab lists the file under another model version than the family's (its
    `detect_version`, for a file without an `sd version` in a NAME.json beside it)."""
    if not metadata:
        return None
    version = "SDXL" if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_") else \
        "SD2" if str(metadata.get("ss_v2", "")) == "True" else "SD1"
    if version != spec.a1111_sd_version:
        return f"the Lora tab lists it as {version} (from its metadata) and hides it on {spec.label} models"
    return None
