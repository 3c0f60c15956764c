"""Flux.1 LoRA files in the four layouts found in the wild, read into and written from kohya
modules ({`lora_unet_double_blocks_…` / `lora_te1_…`: {subkey: tensor}}).

- kohya (sd-scripts `networks/lora_flux.py`): `lora_unet_<BFL path>` with fused `img_attn_qkv`,
  `txt_attn_qkv` and `single_blocks_N_linear1` (q | k | v | MLP), `lora_te1_` (CLIP-L) and
  `lora_te3_` (T5, kohya's number for it); `alpha` per module. ComfyUI loads it, and diffusers
  converts it (`_convert_kohya_flux_lora_to_diffusers`, real width only).
- diffusers/PEFT: `transformer.<diffusers path>.lora_A/B.weight` with split `to_q/to_k/to_v` and
  `proj_mlp`, `text_encoder.` (CLIP) / `text_encoder_2.` (T5); lorakit folds each scale into
  `lora_B` (alpha = rank) since ComfyUI ignores `lora_adapter_metadata`.
- ComfyUI: `diffusion_model.<BFL path>.lora_up/down.weight`, `.alpha`;
  `text_encoders.clip_l.transformer.` / `text_encoders.t5xxl.transformer.`.
- OneTrainer: `lora_transformer_<diffusers path with _>` (split), `lora_te1_` (CLIP),
  `lora_te2_` (T5: OneTrainer numbers its second encoder 2).

Split ↔ fused is exact (lora/fused.py). The shared machinery (grouping keys, factors, folding) is
SD3's (`sd3/layouts.py`); only the names differ.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import torch
from torch import Tensor

from . import naming as flux_naming
from ...errors import LoraKitError
from ...lora import fused
from ...formats.kohya import validate_module
from ...formats.modules import Modules
from ...formats.peft_common import kohya_alpha, lora_config
from ..sd3.layouts import (METADATA_KEY, _cast, _configs, _factors, _folded, _group, _is_t5_path, _module, _plain,
                          shape_reading, te_name, te_path_of)

LAYOUTS = ("kohya", "diffusers", "comfyui", "onetrainer")
_DIFFUSERS_TE = {"te1": "text_encoder", "te3": "text_encoder_2"}
_COMFY_TE = {"te1": "text_encoders.clip_l.transformer", "te3": "text_encoders.t5xxl.transformer"}
_ONETRAINER_TE = {"te1": "lora_te1_", "te3": "lora_te2_"}
_DOUBLE_DIFF = ("transformer.single_transformer_blocks.", "transformer.transformer_blocks.")


def layout_of(keys) -> str | None:
    """Which of Flux's own layouts a file's keys are in (None: none of them). SD3's layouts share
    some of these names (double blocks are SD3's joint blocks in diffusers' spelling, CLIP-L):
    the families' evidence on each reading decides."""
    keys = list(keys)
    if any(k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.",
                         "text_encoders.clip_l.", "text_encoders.t5xxl.")) for k in keys):
        return "comfyui"
    if any(k.startswith("lora_transformer_") for k in keys):
        return "onetrainer"
    if any(k.startswith(_DOUBLE_DIFF) for k in keys):
        return "diffusers"
    return None


def check_kohya_names(modules: Modules, source=None) -> None:
    """Every `lora_unet_` module of a Flux file must name a BFL layer (a typo is an error, not a skip)."""
    unknown = sorted(n for n in modules if n.startswith("lora_unet_") and not flux_naming.is_kohya_name(n))
    if unknown:
        more = f" … and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise LoraKitError(f"{len(unknown)} module(s) are not layers of the Flux transformer: "
                           f"{', '.join(unknown[:5])}{more}", source)


def _fuse_diffusers(split: dict[str, fused.Factors], source) -> dict[str, dict[str, Tensor]]:
    """{diffusers transformer path: factors} → kohya modules on the BFL layers."""
    by_bfl: dict[str, dict[int, tuple[str, fused.Factors]]] = {}
    for path, f in split.items():
        try:
            bfl, i, _ = flux_naming.sai_of(path)
        except KeyError:
            raise LoraKitError(f"module transformer.{path} is not a layer of the Flux transformer", source) from None
        by_bfl.setdefault(bfl, {})[i] = (path, f)
    modules = {}
    for bfl, pieces in by_bfl.items():
        width = next(iter(pieces.values()))[1].down.shape[1]
        rows = _rows_of(bfl, {i: f.up.shape[0] for i, (_, f) in pieces.items()}, width, source)
        layout = flux_naming.diffusers_rows(bfl, rows, width)
        order = sorted(pieces)
        f = fused.fuse([pieces[i][1] for i in order], [layout[i][1] for i in order], rows)
        modules[flux_naming.kohya_name(bfl)] = _module(f)
    return modules


def _rows_of(bfl: str, sizes: dict[int, int], width: int, source) -> int:
    """The BFL layer's row count from the pieces a file holds: q, k and v are the hidden width each;
    a single block's MLP rows come from its `proj_mlp` piece, or are Flux.1's 4 × width when the
    file adapts q/k/v only (diffusers' training script does) and leaves the MLP rows zero."""
    if bfl.endswith(".linear1"):
        return 3 * width + sizes.get(3, 4 * width)
    if bfl.endswith(".qkv"):
        return 3 * max(sizes.values())
    return sizes[0]


def _comfy_module(prefix: str) -> str | None:
    if prefix.startswith("diffusion_model."):
        bfl = prefix[len("diffusion_model."):]
        return flux_naming.kohya_name(bfl) if flux_naming.is_sai_path(bfl) else None
    for part, head in _COMFY_TE.items():
        if prefix.startswith(head + "."):
            return te_name(part, prefix[len(head) + 1:])
    return None


def _onetrainer_module(prefix: str) -> str | None:
    if prefix.startswith("lora_transformer_"):
        path = flux_naming.diffusers_path_of_underscored(prefix[len("lora_transformer_"):])
        return None if path is None else "transformer." + path
    for part, head in _ONETRAINER_TE.items():
        if prefix.startswith(head):
            return f"lora_{part}_" + prefix[len(head):]
    return None


_TE_OF_HEAD = {v: k for k, v in _DIFFUSERS_TE.items()}


def _diffusers_module(prefix: str) -> str | None:
    head, _, rest = prefix.partition(".")
    if head == "transformer" and flux_naming.is_diffusers_path(rest):
        return prefix
    return prefix if head in _TE_OF_HEAD and rest and _is_t5_path(rest) == (head == "text_encoder_2") else None


_MODULE_OF = {"comfyui": _comfy_module, "onetrainer": _onetrainer_module, "diffusers": _diffusers_module}


def _kohya_of(module: str) -> str:
    head, _, path = module.partition(".")
    if head == "transformer":
        return flux_naming.kohya_name(flux_naming.sai_of(path)[0])
    if head in _TE_OF_HEAD:
        return te_name(_TE_OF_HEAD[head], path)
    return module


def reading(shapes: Mapping[str, Sequence[int]], layout: str) -> dict | None:
    """What `read` makes of a file in `layout`, from names and shapes alone (sd3_fmt.shape_reading)."""
    return shape_reading(shapes, _MODULE_OF[layout], _kohya_of)


def read(state: Mapping[str, Tensor], metadata: Mapping[str, str], layout: str,
         source: str | None = None) -> dict[str, dict[str, Tensor]]:
    """A Flux LoRA in any layout → kohya modules (validated)."""
    if layout == "kohya":
        from ...formats import kohya

        modules = kohya.group(state, source)
        check_kohya_names(modules, source)
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
            part = "transformer" if head == "transformer" else _TE_OF_HEAD[head]
            rank = int(t["lora_down.weight"].shape[0]) if "lora_down.weight" in t else 0
            alpha = None if "alpha" in t else kohya_alpha(configs.get(head), part, path, rank)
            f = _factors(key, t, alpha, source)
            if head == "transformer":
                split[path] = f
            else:
                modules[te_name(part, path)] = _module(f)
        modules.update(_fuse_diffusers(split, source))
    else:
        raise LoraKitError(f"unknown Flux layout {layout!r}", source)
    for name, t in modules.items():
        validate_module(name, t, source)
    return modules


# ---- writing ------------------------------------------------------------------------------------------

def _split_unet(name: str, f: fused.Factors, source) -> list[tuple[str, fused.Factors]]:
    bfl = flux_naming.sai_path_of_kohya(name)
    if bfl is None:
        raise LoraKitError(f"module {name} is not a layer of the Flux transformer", source)
    layout = flux_naming.diffusers_rows(bfl, f.up.shape[0], f.down.shape[1])
    return [(path, piece) for (path, _), piece in zip(layout, fused.split(f, [r for _, r in layout]))]


def _te_part(name: str, source) -> tuple[str, str]:
    part, path = te_path_of(name)
    if part not in _DIFFUSERS_TE:
        raise LoraKitError(f"module {name}: Flux has CLIP-L (lora_te1_) and T5 (lora_te3_), not {part}", source)
    return part, path


def write_state(modules: Modules, layout: str, dtype: torch.dtype | None,
                source: str | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """kohya modules → (tensors, extra metadata) in `layout` (kohya itself: the kohya writer)."""
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
                part, path = _te_part(name, source)
                pieces = [(_DIFFUSERS_TE[part], path, _folded(f, dtype))]
            for head, path, g in pieces:
                tensors[f"{head}.{path}.lora_A.weight"] = _cast(g.down, dtype)
                tensors[f"{head}.{path}.lora_B.weight"] = _cast(g.up, dtype)
                entries.setdefault(head, []).append(Entry("unet" if head == "transformer" else head, path,
                                                          g.down, g.up, g.alpha))
        flat = {f"{head}.{k}": v for head, es in entries.items() for k, v in lora_config(es).items()}
        extra[METADATA_KEY] = json.dumps(flat, indent=2, sort_keys=True)
        extra["format"] = "pt"
        return tensors, extra
    if layout not in ("comfyui", "onetrainer"):
        raise LoraKitError(f"unknown Flux layout {layout!r}: choose from {', '.join(LAYOUTS)}", source)
    for name, t in modules.items():
        if name.startswith("lora_unet_") and layout == "onetrainer":
            for path, g in _split_unet(name, _plain(name, t, layout, source), source):
                prefix = "lora_transformer_" + path.replace(".", "_")
                tensors[f"{prefix}.lora_down.weight"] = _cast(g.down, dtype)
                tensors[f"{prefix}.lora_up.weight"] = _cast(g.up, dtype)
                tensors[f"{prefix}.alpha"] = torch.tensor(float(g.alpha))
            continue
        if name.startswith("lora_unet_"):
            bfl = flux_naming.sai_path_of_kohya(name)
            if bfl is None:
                raise LoraKitError(f"module {name} is not a layer of the Flux transformer", source)
            prefix = "diffusion_model." + bfl
        else:
            part, path = _te_part(name, source)
            prefix = (f"{_COMFY_TE[part]}.{path}" if layout == "comfyui"
                      else _ONETRAINER_TE[part] + path.replace(".", "_"))
        for sub, v in t.items():
            tensors[f"{prefix}.{sub}"] = v.detach().cpu().reshape(()).float() if sub == "alpha" else _cast(v, dtype)
    return tensors, extra
