"""Z-Image LoRA files, read into and written from kohya modules ({`lora_unet_<diffusers path>`: {subkey: tensor}}).

- kohya (musubi-tuner `networks/lora_zimage.py`): `lora_unet_layers_N_attention_to_q` … split q/k/v,
  `alpha` per module. diffusers loads it (`_convert_non_diffusers_z_image_lora_to_diffusers`);
  ComfyUI does not (its Z-Image model holds q/k/v fused: it maps `lora_unet_` names of its own
  `attention.qkv` only).
- diffusers/PEFT: `transformer.<path>.lora_A/B.weight`, each module's scale folded into `lora_B`
  (alpha = rank), the PEFT config in `lora_adapter_metadata`.
- comfyui: `diffusion_model.<diffusers path>.lora_down/lora_up.weight` + `alpha`: ComfyUI's
  Lumina2/Z-Image key map (`z_image_to_diffusers`) places each piece in its fused layer, and
  diffusers' Z-Image converter reads it too. Read besides: the fused original names ComfyUI's
  model holds (`diffusion_model.layers.N.attention.qkv`, `.attention.out`) and the same spelt
  kohya-style (`lora_unet_layers_N_attention_qkv`, what musubi-tuner's
  `convert_z_image_lora_to_comfy.py` writes): q, k and v split exactly, a block-diagonal `up`
  giving each piece only its own rank.

Z-Image's only text encoder (Qwen3) never gets a LoRA here, so no layout holds one.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import torch
from torch import Tensor

from . import naming as zi
from ...errors import LoraKitError
from ...formats.diffusers_fmt import METADATA_KEY, component_configs
from ...formats.kohya import validate_module
from ...formats.modules import Modules, Shaped
from ...formats.peft_common import Entry, kohya_alpha, lora_config
from ...lora import fused
from ..dit.layouts import _kohya_sub, cast, factors, folded, group, module_tensors, plain, shape_reading

LAYOUTS = ("kohya", "diffusers", "comfyui")
_COMFY = "diffusion_model."
_DIFFUSERS = "transformer."
_FUSED = "\0fused:"  # a module id of `group` that names a fused qkv layer (its diffusers block path follows)


# ---- names ------------------------------------------------------------------------------------------------------

def check_kohya_names(modules: Modules, source=None) -> None:
    """Every module must name a layer of Z-Image's transformer (a typo is an error, not a skip)."""
    unknown = sorted(n for n in modules if not zi.is_kohya_name(n))
    if unknown:
        te = any(n.startswith("lora_te") for n in unknown)
        more = f" … and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        hint = " (Z-Image's Qwen3 text encoder takes no LoRA)" if te else ""
        raise LoraKitError(f"{len(unknown)} module(s) are not layers of the Z-Image transformer{hint}: "
                           f"{', '.join(unknown[:5])}{more}", source)


def _path(name: str, source) -> str:
    path = zi.path_of_kohya(name)
    if path is None:
        raise LoraKitError(f"module {name} is not a layer of the Z-Image transformer", source)
    return path


def _comfy_module(prefix: str) -> str | None:
    """A ComfyUI-layout key's module: a kohya name, or `_FUSED` + block for a fused `attention.qkv`."""
    if prefix.startswith(_COMFY):
        rest = prefix[len(_COMFY):]
        if zi.is_diffusers_path(rest):
            return zi.kohya_name(rest)
        paths = zi.diffusers_path_of_original(rest)
    elif prefix.startswith(zi.PREFIX) and "." not in prefix:
        if zi.is_kohya_name(prefix):  # the layers musubi-tuner's conversion leaves as they are
            return prefix
        m = zi.KOHYA_BLOCK.match(prefix[len(zi.PREFIX):])
        if m is None or m.group(3) not in ("attention_qkv", "attention_out"):
            return None
        paths = zi.diffusers_path_of_original(f"{m.group(1)}.{m.group(2)}.{m.group(3).replace('_', '.')}")
    else:
        return None
    if paths is None:
        return None
    if len(paths) == 3:
        return _FUSED + paths[0].rpartition(".")[0]
    return zi.kohya_name(paths[0])


def _diffusers_module(prefix: str) -> str | None:
    if prefix.startswith(_DIFFUSERS) and zi.is_diffusers_path(prefix[len(_DIFFUSERS):]):
        return zi.kohya_name(prefix[len(_DIFFUSERS):])
    return None


def _kohya_of(module: str) -> str:
    if module.startswith(_FUSED):
        return zi.kohya_name(module[len(_FUSED):] + ".to_q")
    return module


def layout_of(keys) -> str | None:
    """Which of Z-Image's own layouts a file's keys are in (None: none; plain kohya names are read by
    formats/ for every family)."""
    keys = list(keys)
    if any(k.startswith(_DIFFUSERS) and _diffusers_module(k.rsplit(".", 2)[0]) for k in keys
           if k.endswith((".lora_A.weight", ".lora_B.weight"))):
        return "diffusers"
    for k in keys:
        prefix = k.split(".lora_")[0].rsplit(".alpha", 1)[0]
        if (k.startswith(_COMFY) or "_attention_qkv." in k or "_attention_out." in k) and _comfy_module(prefix):
            return "comfyui"
    return None


def reading(shapes: Mapping[str, Sequence[int]], layout: str) -> dict[str, dict[str, Shaped]] | None:
    """What `read` makes of a file in `layout`, from names and shapes alone (a fused qkv stands for
    its three pieces by its q's name)."""
    to_module = {"comfyui": _comfy_module, "diffusers": _diffusers_module}.get(layout)
    return None if to_module is None else shape_reading(shapes, to_module, _kohya_of)


# ---- reading ------------------------------------------------------------------------------------------------------

def _split_qkv(f: fused.Factors) -> list[fused.Factors]:
    """A LoRA on the stacked q|k|v → one per piece, exactly; the columns of `up` a piece does not use
    are dropped (musubi-tuner's block-diagonal fusing then gives each piece its own rank back)."""
    rows = f.up.shape[0] // 3
    out = []
    for i in range(3):
        up = f.up[i * rows:(i + 1) * rows]
        used = up.abs().sum(dim=0) != 0
        if not used.any() or bool(used.all()):
            out.append(fused.Factors(f.down, up, f.alpha))
            continue
        out.append(fused.Factors(f.down[used], up[:, used], f.alpha * int(used.sum()) / f.rank))
    return out


def read(state: Mapping[str, Tensor], metadata: Mapping[str, str], layout: str,
         source: str | None = None) -> dict[str, dict[str, Tensor]]:
    """A Z-Image LoRA in any of its layouts → kohya modules (validated)."""
    if layout == "kohya":
        from ...formats import kohya

        modules = kohya.group(state, source)
        check_kohya_names(modules, source)
    elif layout == "comfyui":
        modules = {}
        for module, t in group(state, _comfy_module, source, "Z-Image").items():
            if not module.startswith(_FUSED):
                modules[module] = dict(t)
                continue
            block = module[len(_FUSED):]
            for q, piece in zip(zi.QKV, _split_qkv(factors(f"{block}.attention.qkv", t, None, source))):
                modules[zi.kohya_name(f"{block}.{q}")] = module_tensors(piece)
    elif layout == "diffusers":
        config = component_configs(metadata).get("transformer")
        modules = {}
        for name, t in group(state, _diffusers_module, source, "Z-Image").items():
            rank = int(t["lora_down.weight"].shape[0]) if "lora_down.weight" in t else 0
            alpha = None if "alpha" in t else kohya_alpha(config, "transformer", zi.path_of_kohya(name), rank)
            modules[name] = module_tensors(factors(name, t, alpha, source))
    else:
        raise LoraKitError(f"unknown Z-Image layout {layout!r}: choose from {', '.join(LAYOUTS)}", source)
    for name, t in modules.items():
        validate_module(name, t, source)
    return modules


# ---- writing ------------------------------------------------------------------------------------------------------

def write_state(modules: Modules, layout: str, dtype: torch.dtype | None,
                source: str | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """kohya modules → (tensors, extra metadata) in `layout` (not kohya: the kohya writer does that)."""
    check_kohya_names(modules, source)
    if layout == "comfyui":
        tensors = {f"{_COMFY}{_path(name, source)}.{sub}": _kohya_sub(sub, v, dtype)
                   for name, t in modules.items() for sub, v in t.items()}
        return tensors, {}
    if layout != "diffusers":
        raise LoraKitError(f"unknown Z-Image layout {layout!r}: choose from {', '.join(LAYOUTS)}", source)
    tensors, entries = {}, []
    for name, t in modules.items():
        path, g = _path(name, source), folded(plain(name, t, "diffusers", source), dtype)
        tensors[f"{_DIFFUSERS}{path}.lora_A.weight"] = cast(g.down, dtype)
        tensors[f"{_DIFFUSERS}{path}.lora_B.weight"] = cast(g.up, dtype)
        entries.append(Entry("unet", path, g.down, g.up, g.alpha))
    flat = {f"transformer.{k}": v for k, v in lora_config(entries).items()}
    return tensors, {METADATA_KEY: json.dumps(flat, indent=2, sort_keys=True), "format": "pt"}


__all__ = ["LAYOUTS", "check_kohya_names", "layout_of", "read", "reading", "write_state"]
