"""diffusers LoRA files: PEFT keys (`unet.<path>.lora_A.weight`) and the older styles
(`….lora.down.weight`, `….lora_linear_layer.down.weight`, attention processors
`…attn1.processor.to_q_lora.down.weight`), read into kohya modules; written in the PEFT style that
`pipe.load_lora_weights` reads, with alphas in diffusers' `lora_adapter_metadata` key."""

from __future__ import annotations

import json
import re
from typing import Mapping

import torch
from torch import Tensor

from ..errors import LoraKitError
from .part_families import family_of_parts
from .kohya import _listing, validate_module
from .paths import DIFFUSERS_PREFIX, kohya_part, path_to_kohya
from .peft_common import Entry, kohya_alpha, lora_config

METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
_UNET_STARTS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "time_embedding.")
_SUFFIXES = ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
             (".lora.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
             (".lora_linear_layer.up.weight", "up"), (".lora_magnitude_vector.weight", "magnitude"),
             (".lora_magnitude_vector", "magnitude"), (".alpha", "alpha"))
_PROCESSOR = re.compile(r"^(.*?)(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_PROC_TARGET = {"unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
                "te": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}}


def _split_part(key: str) -> tuple[str, str] | None:
    for prefix, part in (("unet.", "unet"), ("text_encoder_2.", "te2"), ("text_encoder.", "te")):
        if key.startswith(prefix):
            return part, key[len(prefix):]
    if key.startswith(_UNET_STARTS):  # attention-processor files saved by `unet.save_attn_procs`
        return "unet", key
    return None


def parse_key(key: str) -> tuple[str, str, str] | None:
    """(part, module path, role) with role down / up / alpha / magnitude, or None if not a LoRA key."""
    split = _split_part(key)
    if split is None:
        return None
    part, rest = split
    m = _PROCESSOR.match(rest)
    if m:
        table = _PROC_TARGET["unet" if part == "unet" else "te"]
        return part, f"{m[1]}.{table[m[2]]}", m[3]
    for suffix, role in _SUFFIXES:
        if rest.endswith(suffix) and len(rest) > len(suffix):
            return part, rest[: -len(suffix)], role
    return None


def component_configs(metadata: Mapping[str, str]) -> dict[str, dict]:
    """diffusers' LoraConfig dicts per component (`unet`, `transformer`, `text_encoder`…) from the
    file's `lora_adapter_metadata` key ({} when absent or not JSON)."""
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


def part_configs(metadata: Mapping[str, str]) -> dict[str, dict]:
    """The UNet families' configs by lorakit part (unet, te, te2)."""
    parts = {"unet": "unet", "text_encoder": "te", "text_encoder_2": "te2"}
    return {parts[c]: config for c, config in component_configs(metadata).items() if c in parts}


def read(state: Mapping[str, Tensor], metadata: Mapping[str, str], family: str | None = None,
         source: str | None = None) -> tuple[dict[str, dict[str, Tensor]], str | None]:
    """Flat diffusers keys → (kohya modules, family)."""
    grouped: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        parsed = parse_key(key)
        if parsed is None:
            unknown.append(key)
            continue
        part, path, role = parsed
        grouped.setdefault((part, path), {})[role] = value
    if unknown:
        raise LoraKitError(f"{len(unknown)} unknown key(s): {_listing(unknown)}", source)
    configs = part_configs(metadata)
    provisional: dict[tuple[str, str], dict[str, Tensor]] = {}
    for (part, path), roles in grouped.items():
        where = f"{DIFFUSERS_PREFIX[part]}.{path}"
        for role, partner in (("down", "up"), ("up", "down")):
            if role in roles and partner not in roles:
                raise LoraKitError(f"module {where} has lora_{role} but no lora_{partner} partner", source)
        if "down" not in roles:
            raise LoraKitError(f"module {where} has {sorted(roles)} but no LoRA weights", source)
        down, up = roles["down"], roles["up"]
        rank = int(down.shape[0])
        alpha = float(roles["alpha"]) if "alpha" in roles else kohya_alpha(configs.get(part), part, path, rank)
        t = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(alpha)}
        if "magnitude" in roles:  # PEFT DoRA: one magnitude per output row = LyCORIS' wd_on_out layout
            mag = roles["magnitude"]
            t["dora_scale"] = mag.reshape(up.shape[0], *([1] * (down.dim() - 1)))  # PEFT conv: [1, out, 1, 1]
        provisional[(part, path)] = t
    # the family decides the names: SAI spelling and lora_te1 for SDXL
    if family is None:
        family = family_of_parts(provisional, metadata)
    modules: dict[str, dict[str, Tensor]] = {}
    for (part, path), t in provisional.items():
        name = path_to_kohya(kohya_part(part, family), path, family)
        validate_module(name, t, source)
        modules[name] = t
    return modules, family


def write_state(entries: list[Entry], dtype: torch.dtype | None) -> tuple[dict[str, Tensor], dict[str, dict]]:
    """Entries → (diffusers PEFT-keyed tensors, {diffusers prefix: LoraConfig fields})."""
    tensors: dict[str, Tensor] = {}
    by_prefix: dict[str, list[Entry]] = {}
    for e in entries:
        prefix = DIFFUSERS_PREFIX[e.part]
        by_prefix.setdefault(prefix, []).append(e)
        path = e.path
        if e.part != "unet" and not path.startswith("text_model."):
            path = "text_model." + path  # the classic layout; diffusers drops it for transformers 5
        for role, w in (("lora_A", e.down), ("lora_B", e.up)):
            w = w.detach().cpu()
            if dtype is not None and w.is_floating_point():
                w = w.to(dtype)
            tensors[f"{prefix}.{path}.{role}.weight"] = w.contiguous()
    return tensors, {prefix: lora_config(es) for prefix, es in by_prefix.items()}


def adapter_metadata(configs: dict[str, dict]) -> str:
    """diffusers' layout: one JSON object, keys `<prefix>.<LoraConfig field>` (see lora_base.py)."""
    flat = {f"{prefix}.{k}": v for prefix, cfg in configs.items() for k, v in cfg.items()}
    return json.dumps(flat, indent=2, sort_keys=True)

