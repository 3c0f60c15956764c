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
from typing import Mapping

import torch
from torch import Tensor

from . import naming as flux_naming
from ...errors import LoraKitError
from ...lora import fused
from ...formats.kohya import validate_module
from ...formats.modules import Modules
from ...formats.peft_common import kohya_alpha, lora_config
from ..sd3.layouts import (METADATA_KEY, _cast, _configs, _factors, _folded, _group, _module, _plain, te_name,
                      te_path_of)

LAYOUTS = ("kohya", "diffusers", "comfyui", "onetrainer")
_DIFFUSERS_TE = {"te1": "text_encoder", "te3": "text_encoder_2"}
_COMFY_TE = {"te1": "text_encoders.clip_l.transformer", "te3": "text_encoders.t5xxl.transformer"}
_ONETRAINER_TE = {"te1": "lora_te1_", "te3": "lora_te2_"}
_DOUBLE_DIFF = ("transformer.single_transformer_blocks.", "transformer.transformer_blocks.")


def _says_flux(metadata: Mapping[str, str] | None) -> bool:
    md = metadata or {}
    return md.get("ss_base_model_version", "").startswith("flux") or \
        md.get("modelspec.architecture", "").startswith("flux")


def layout_of(keys, metadata: Mapping[str, str] | None = None) -> str | None:
    """Which Flux layout a file's keys are in (None when they are not a Flux LoRA).

    Names alone cannot tell a Flux diffusers file that adapts double blocks only from an SD3 one
    (both have `transformer_blocks.N.attn.to_q`); single blocks or the metadata decide.
    """
    keys = list(keys)
    flux_md = _says_flux(metadata)
    if any(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys):
        return "kohya"
    if any(k.startswith(("diffusion_model.double_blocks.", "diffusion_model.single_blocks.")) for k in keys):
        return "comfyui"
    if any(k.startswith("lora_transformer_single_transformer_blocks_") for k in keys) or \
            (flux_md and any(k.startswith("lora_transformer_") for k in keys)):
        return "onetrainer"
    if any(k.startswith("transformer.single_transformer_blocks.") for k in keys) or \
            (flux_md and any(k.startswith(_DOUBLE_DIFF) for k in keys)):
        return "diffusers"
    if flux_md and any(k.startswith(("lora_unet_", "lora_te1_", "lora_te3_")) for k in keys):
        return "kohya"
    return None


def check_kohya_names(modules: Modules, source=None) -> None:
    """Every `lora_unet_` module of a Flux file must name a BFL layer (a typo is an error, not a skip)."""
    unknown = sorted(n for n in modules if n.startswith("lora_unet_") and not flux_naming.is_kohya_name(n))
    if unknown:
        more = f" … and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise LoraKitError(f"{len(unknown)} module(s) are not layers of the Flux transformer: "
                           f"{', '.join(unknown[:5])}{more}", source)


def is_flux_modules(modules: Modules) -> bool:
    return any(flux_naming.is_kohya_name(n) for n in modules)


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


def read(state: Mapping[str, Tensor], metadata: Mapping[str, str], layout: str,
         source: str | None = None) -> dict[str, dict[str, Tensor]]:
    """A Flux LoRA in any layout → kohya modules (validated)."""
    if layout == "kohya":
        from ...formats import kohya

        modules = kohya.group(state, source)
        check_kohya_names(modules, source)
    elif layout == "comfyui":
        def comfy(prefix: str):
            if prefix.startswith("diffusion_model."):
                bfl = prefix[len("diffusion_model."):]
                return flux_naming.kohya_name(bfl) if flux_naming.is_sai_path(bfl) else None
            for part, head in _COMFY_TE.items():
                if prefix.startswith(head + "."):
                    return te_name(part, prefix[len(head) + 1:])
            return None

        modules = _group(state, comfy, source)
    elif layout == "onetrainer":
        def onetrainer(prefix: str):
            if prefix.startswith("lora_transformer_"):
                path = flux_naming.diffusers_path_of_underscored(prefix[len("lora_transformer_"):])
                return None if path is None else "transformer." + path
            for part, head in _ONETRAINER_TE.items():
                if prefix.startswith(head):
                    return f"lora_{part}_" + prefix[len(head):]
            return None

        grouped = _group(state, onetrainer, source)
        split = {k[len("transformer."):]: _factors(k, t, None, source) for k, t in grouped.items()
                 if k.startswith("transformer.")}
        modules = _fuse_diffusers(split, source)
        modules.update({k: t for k, t in grouped.items() if not k.startswith("transformer.")})
    elif layout == "diffusers":
        configs = _configs(metadata)
        te_parts = {v: k for k, v in _DIFFUSERS_TE.items()}

        def diffusers(prefix: str):
            head, _, rest = prefix.partition(".")
            if head == "transformer" and flux_naming.is_diffusers_path(rest):
                return prefix
            return prefix if head in te_parts and rest else None

        grouped = _group(state, diffusers, source)
        split, modules = {}, {}
        for key, t in grouped.items():
            head, _, path = key.partition(".")
            part = "transformer" if head == "transformer" else te_parts[head]
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
