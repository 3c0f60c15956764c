"""SD 3.x LoRA files in the four layouts found in the wild, read into and written from kohya
modules ({`lora_unet_joint_blocks_…` / `lora_te1_…`: {subkey: tensor}}).

- kohya (sd-scripts `networks/lora_sd3.py`): `lora_unet_<SAI path>` with fused `attn_qkv`,
  `lora_te1_` (CLIP-L), `lora_te2_` (CLIP-G), `lora_te3_` (T5); `alpha` per module. ComfyUI
  loads it; diffusers does not (it has no converter for these keys).
- diffusers/PEFT: `transformer.<diffusers path>.lora_A.weight` / `lora_B.weight` with split
  `to_q/to_k/to_v`, `text_encoder{,_2,_3}.<path>`; alphas only in `lora_adapter_metadata`,
  which ComfyUI ignores. lorakit writes it with each module's scale folded into `lora_B` and
  alpha = rank, so diffusers and ComfyUI apply the same strength: the layout both load.
- ComfyUI: `diffusion_model.<SAI path>.lora_up.weight` (or `lora_B`), `.alpha`;
  `text_encoders.clip_l.transformer.<path>` and `clip_g` / `t5xxl`.
- OneTrainer: `lora_transformer_<diffusers path with _>` (split q/k/v) with kohya sub-keys.

A split q/k/v becomes the fused kohya module exactly (lora/fused.py): one `down` when the three
share it, else rank 3r with a block-diagonal `up`.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import torch
from torch import Tensor

from . import naming as sd3_naming
from ...errors import LoraKitError
from ...lora import fused
from ...formats.kohya import _listing, validate_module
from ...formats.modules import Modules, Shaped, algo_of, alpha_of, rank_of
from ...formats.paths import underscored_to_path
from ...formats.peft_common import fold_scale, kohya_alpha, lora_config

LAYOUTS = ("kohya", "diffusers", "comfyui", "onetrainer")
METADATA_KEY = "lora_adapter_metadata"
_TE = {"te1": ("text_encoder", "clip_l"), "te2": ("text_encoder_2", "clip_g"), "te3": ("text_encoder_3", "t5xxl")}
_DIFFUSERS_PART = {v[0]: k for k, v in _TE.items()}
_COMFY_PART = {f"text_encoders.{v[1]}.transformer": k for k, v in _TE.items()}
_SUB_ROLE = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
             "lora_down.weight": "lora_down.weight", "lora_up.weight": "lora_up.weight", "alpha": "alpha"}
_T5_WORDS = ("wi_0", "wi_1")


def layout_of(keys) -> str | None:
    """Which of SD3's own layouts a file's keys are in (None: none of them). Flux's layouts share
    some of these names (double blocks, CLIP-L): the families' evidence on each reading decides."""
    keys = list(keys)
    if any(k.startswith("lora_transformer_") for k in keys):
        return "onetrainer"
    if any(k.startswith(("diffusion_model.joint_blocks.", "text_encoders.clip_")) for k in keys):
        return "comfyui"
    if any(k.startswith(("transformer.transformer_blocks.", "text_encoder_3.")) for k in keys):
        return "diffusers"
    return None


def _te_path(part: str, path: str) -> str:
    """A text-encoder module path as kohya names it: CLIP paths under `text_model.`."""
    if part in ("te1", "te2") and not path.startswith("text_model."):
        return "text_model." + path
    return path


def te_name(part: str, path: str) -> str:
    return f"lora_{part}_" + _te_path(part, path).replace(".", "_")


def te_path_of(name: str) -> tuple[str, str]:
    """(`te1`, `text_model.encoder.layers.0.self_attn.q_proj`) from a kohya text-encoder name."""
    for part in _TE:
        prefix = f"lora_{part}_"
        if name.startswith(prefix):
            rest = name[len(prefix):]
            for word in _T5_WORDS:  # T5's gated MLP layers have "_" in their names
                rest = rest.replace(f"_{word}", "." + word.replace("_", "\0"))
            return part, underscored_to_path(rest).replace("\0", "_").replace("..", ".")
    raise LoraKitError(f"not an SD3 text-encoder module name: {name}")


def _split_sub(key: str) -> tuple[str, str] | None:
    for sub in sorted(_SUB_ROLE, key=len, reverse=True):
        if key.endswith("." + sub):
            return key[: -len(sub) - 1], _SUB_ROLE[sub]
    return None


def _group(state: Mapping[str, Tensor], to_module, source) -> dict[str, dict[str, Tensor]]:
    """Flat keys → {module id: {kohya subkey: tensor}}; `to_module(prefix)` names the module or
    returns None for a key that does not belong (reported as unknown)."""
    out: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        split = _split_sub(key)
        module = to_module(split[0]) if split else None
        if module is None:
            unknown.append(key)
            continue
        out.setdefault(module, {})[split[1]] = value
    if unknown:
        raise LoraKitError(f"{len(unknown)} unknown key(s) for an SD3 LoRA: {_listing(unknown)}", source)
    return out


def _factors(where: str, t: Mapping[str, Tensor], alpha: float | None, source) -> fused.Factors:
    if "lora_down.weight" not in t or "lora_up.weight" not in t:
        have = "lora_down" if "lora_down.weight" in t else "lora_up"
        raise LoraKitError(f"module {where} has {have} but not its partner", source)
    down, up = t["lora_down.weight"], t["lora_up.weight"]
    if down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]:
        raise LoraKitError(f"module {where}: lora_up {tuple(up.shape)} does not match lora_down "
                           f"{tuple(down.shape)}", source)
    if alpha is None:
        alpha = float(t["alpha"]) if "alpha" in t else float(down.shape[0])
    return fused.Factors(down, up, alpha)


def _module(f: fused.Factors) -> dict[str, Tensor]:
    return {"lora_down.weight": f.down, "lora_up.weight": f.up, "alpha": torch.tensor(float(f.alpha))}


def _fuse_diffusers(split: dict[str, fused.Factors], source) -> dict[str, dict[str, Tensor]]:
    """{diffusers transformer path: factors} → kohya modules on the SAI layers."""
    by_sai: dict[str, dict[int, fused.Factors]] = {}
    counts: dict[str, int] = {}
    for path, f in split.items():
        try:
            sai, i, n = sd3_naming.sai_of(path)
        except KeyError:
            raise LoraKitError(f"module transformer.{path} is not a layer of the SD3 transformer", source) from None
        by_sai.setdefault(sai, {})[i] = f
        counts[sai] = n
    modules = {}
    for sai, pieces in by_sai.items():
        n = counts[sai]
        any_piece = next(iter(pieces.values()))
        rows = any_piece.up.shape[0] * n
        layout = sd3_naming.diffusers_rows(sai, rows, any_piece.down.shape[1])
        order = sorted(pieces)
        f = fused.fuse([pieces[i] for i in order], [layout[i][1] for i in order], rows)
        modules[sd3_naming.kohya_name(sai)] = _module(f)
    return modules


def _is_t5_path(path: str) -> bool:
    return path.startswith(("encoder.block.", "shared", "encoder.final_layer_norm"))


def _comfy_module(prefix: str) -> str | None:
    if prefix.startswith("diffusion_model."):
        sai = prefix[len("diffusion_model."):]
        return sd3_naming.kohya_name(sai) if sd3_naming.is_sai_path(sai) else None
    for head, part in _COMFY_PART.items():
        if prefix.startswith(head + "."):
            return te_name(part, prefix[len(head) + 1:])
    return None


def _onetrainer_module(prefix: str) -> str | None:
    if prefix.startswith("lora_transformer_"):
        path = sd3_naming.diffusers_path_of_underscored(prefix[len("lora_transformer_"):])
        return None if path is None else "transformer." + path
    return prefix if prefix.startswith(("lora_te1_", "lora_te2_", "lora_te3_")) else None


def _diffusers_module(prefix: str) -> str | None:
    head, _, rest = prefix.partition(".")
    if head == "transformer" and sd3_naming.is_diffusers_path(rest):
        return prefix
    if head in _DIFFUSERS_PART and rest and _is_t5_path(rest) == (head == "text_encoder_3"):
        return prefix
    return None


_MODULE_OF = {"comfyui": _comfy_module, "onetrainer": _onetrainer_module, "diffusers": _diffusers_module}


def _kohya_of(module: str) -> str:
    """The kohya name of what a layout's key names (a split transformer piece, a diffusers text
    encoder module, or already a kohya name)."""
    head, _, path = module.partition(".")
    if head == "transformer":
        return sd3_naming.kohya_name(sd3_naming.sai_of(path)[0])
    if head in _DIFFUSERS_PART:
        return te_name(_DIFFUSERS_PART[head], path)
    return module


def shape_reading(shapes: Mapping[str, Sequence[int]], module_of, kohya_of) -> dict[str, dict[str, Shaped]] | None:
    """The kohya modules a file reads into, with shape-only stand-ins, from its header (the fused
    module takes the shapes of one of its pieces: the same input width); None when `module_of`
    places some key nowhere."""
    out: dict[str, dict[str, Shaped]] = {}
    for key, shape in shapes.items():
        split = _split_sub(key)
        module = module_of(split[0]) if split else None
        if module is None:
            return None
        out.setdefault(kohya_of(module), {})[split[1]] = Shaped(shape)
    return out


def reading(shapes: Mapping[str, Sequence[int]], layout: str) -> dict[str, dict[str, Shaped]] | None:
    """What `read` makes of a file in `layout`, from names and shapes alone (see `shape_reading`)."""
    return shape_reading(shapes, _MODULE_OF[layout], _kohya_of)


def read(state: Mapping[str, Tensor], metadata: Mapping[str, str], layout: str,
         source: str | None = None) -> dict[str, dict[str, Tensor]]:
    """An SD3 LoRA in any layout → kohya modules (validated)."""
    if layout == "kohya":
        from ...formats import kohya

        modules = kohya.group(state, source)
    elif layout == "comfyui":
        modules = _group(state, _comfy_module, source)
    elif layout == "onetrainer":
        grouped = _group(state, _onetrainer_module, source)
        split = {k[len("transformer."):]: _factors(k, t, None, source) for k, t in grouped.items()
                 if k.startswith("transformer.")}
        modules = _fuse_diffusers(split, source)
        modules.update({k: t for k, t in grouped.items() if not k.startswith("transformer.")})
    elif layout == "diffusers":
        configs = _configs(metadata)
        grouped = _group(state, _diffusers_module, source)
        split, modules = {}, {}
        for key, t in grouped.items():
            head, _, path = key.partition(".")
            part = "transformer" if head == "transformer" else _DIFFUSERS_PART[head]
            rank = int(t["lora_down.weight"].shape[0]) if "lora_down.weight" in t else 0
            alpha = None if "alpha" in t else kohya_alpha(configs.get(head), part, path, rank)
            f = _factors(key, t, alpha, source)
            if head == "transformer":
                split[path] = f
            else:
                modules[te_name(part, path)] = _module(f)
        modules.update(_fuse_diffusers(split, source))
    else:
        raise LoraKitError(f"unknown SD3 layout {layout!r}", source)
    for name, t in modules.items():
        validate_module(name, t, source)
    return modules


def _configs(metadata: Mapping[str, str]) -> dict[str, dict]:
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    out: dict[str, dict] = {}
    for key, value in flat.items():
        prefix, _, field = key.partition(".")
        if field:
            out.setdefault(prefix, {})[field] = value
    return out


# ---- writing ------------------------------------------------------------------------------------------

def _plain(name: str, t, layout: str, source) -> fused.Factors:
    if algo_of(t) != "lora" or "dora_scale" in t:
        raise LoraKitError(f"module {name} is {algo_of(t)}: the {layout} layout holds plain LoRA only "
                           "(keep this file in kohya layout)", source)
    a = alpha_of(t)
    return fused.Factors(t["lora_down.weight"], t["lora_up.weight"], float(rank_of(t) if a is None else a))


def _split_unet(name: str, f: fused.Factors, source) -> list[tuple[str, fused.Factors]]:
    sai = sd3_naming.sai_path_of_kohya(name)
    if sai is None:
        raise LoraKitError(f"module {name} is not a layer of the SD3 transformer", source)
    layout = sd3_naming.diffusers_rows(sai, f.up.shape[0], f.down.shape[1])
    return [(path, piece) for (path, _), piece in zip(layout, fused.split(f, [r for _, r in layout]))]


def _cast(t: Tensor, dtype) -> Tensor:
    t = t.detach().cpu()
    return (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()


def _folded(f: fused.Factors, dtype: torch.dtype | None) -> fused.Factors:
    """Scale into `up` (in the precision written), alpha = rank: the same ΔW for loaders that read
    no alpha (ComfyUI on PEFT keys)."""
    if f.scale == 1.0:
        return fused.Factors(f.down, f.up, float(f.rank))
    return fused.Factors(f.down, fold_scale(f.up, f.scale, dtype), float(f.rank))


def write_state(modules: Modules, layout: str, dtype: torch.dtype | None,
                source: str | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """kohya modules → (tensors, extra metadata) in `layout` (not kohya: the kohya writer does that)."""
    tensors: dict[str, Tensor] = {}
    extra: dict[str, str] = {}
    if layout == "diffusers":
        from ...formats.peft_common import Entry

        entries: dict[str, list] = {}
        for name, t in modules.items():
            f = _plain(name, t, layout, source)
            if name.startswith("lora_unet_"):
                pieces = [("transformer", p, _folded(g, dtype)) for p, g in _split_unet(name, f, source)]
            else:
                part, path = te_path_of(name)
                pieces = [(_TE[part][0], path, _folded(f, dtype))]
            for head, path, g in pieces:
                tensors[f"{head}.{path}.lora_A.weight"] = _cast(g.down, dtype)
                tensors[f"{head}.{path}.lora_B.weight"] = _cast(g.up, dtype)
                entries.setdefault(head, []).append(Entry("unet" if head == "transformer" else head, path,
                                                          g.down, g.up, g.alpha))
        flat = {f"{head}.{k}": v for head, es in entries.items() for k, v in lora_config(es).items()}
        extra[METADATA_KEY] = json.dumps(flat, indent=2, sort_keys=True)
        extra["format"] = "pt"
        return tensors, extra
    for name, t in modules.items():
        if layout == "comfyui":
            if name.startswith("lora_unet_"):
                sai = sd3_naming.sai_path_of_kohya(name)
                if sai is None:
                    raise LoraKitError(f"module {name} is not a layer of the SD3 transformer", source)
                prefix = "diffusion_model." + sai
            else:
                part, path = te_path_of(name)
                prefix = f"text_encoders.{_TE[part][1]}.transformer.{path}"
            for sub, v in t.items():
                tensors[f"{prefix}.{sub}"] = v.detach().cpu().reshape(()).float() if sub == "alpha" else _cast(v, dtype)
        elif layout == "onetrainer":
            if name.startswith("lora_unet_"):
                f = _plain(name, t, layout, source)
                for path, g in _split_unet(name, f, source):
                    prefix = "lora_transformer_" + path.replace(".", "_")
                    tensors[f"{prefix}.lora_down.weight"] = _cast(g.down, dtype)
                    tensors[f"{prefix}.lora_up.weight"] = _cast(g.up, dtype)
                    tensors[f"{prefix}.alpha"] = torch.tensor(float(g.alpha))
            else:
                for sub, v in t.items():
                    tensors[f"{name}.{sub}"] = v.detach().cpu().reshape(()).float() if sub == "alpha" else _cast(v, dtype)
        else:
            raise LoraKitError(f"unknown SD3 layout {layout!r}: choose from {', '.join(LAYOUTS)}", source)
    return tensors, extra
