"""What the diffusers (PEFT-keyed) file and the PEFT adapter folder share: per-part LoRA entries,
the LoraConfig fields (r, lora_alpha, rank_pattern, alpha_pattern, target_modules) and PEFT's rule
for which pattern applies to a module."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from ..errors import LoraKitError
from .modules import Modules, algo_of, alpha_of, most_common, rank_of
from .paths import layout_for, path_for


@dataclass
class Entry:
    """One plain-LoRA module addressed by its model part and module path."""

    part: str
    path: str
    down: Tensor
    up: Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def pattern_path(part: str, path: str) -> str:
    """The module path used in target_modules/rank_pattern: without `text_model.` for text
    encoders, which PEFT's suffix match finds with and without that level (transformers 4 and 5)."""
    if part != "unet" and path.startswith("text_model."):
        return path[len("text_model."):]
    return path


def entries_from_modules(modules: Modules, *, parts=None, family: str | None = None, layout=None,
                         source: str | None = None, fmt: str = "diffusers",
                         dtype: torch.dtype | None = None) -> list[Entry]:
    """kohya modules → entries; only plain LoRA (LoCon included) has a PEFT/diffusers form.
    `dtype`: the one the file is written in (alpha/r is folded into `up` in that precision)."""
    out = []
    for name, t in modules.items():
        algo = algo_of(t)
        if algo != "lora" or "dora_scale" in t:
            what = "DoRA" if "dora_scale" in t else {"locon": "Tucker (lora_mid)", "loha": "LoHa", "lokr": "LoKr",
                                                     "full": "full-weight"}.get(algo, algo)
            raise LoraKitError(f"module {name} is {what}: {fmt} files hold plain LoRA only "
                               f"(keep this file in kohya format)", source)
        part, path = path_for(name, parts, layout or layout_for(family), source)
        out.append(folded(Entry(part, path, t["lora_down.weight"], t["lora_up.weight"],
                                float(rank_of(t) if alpha_of(t) is None else alpha_of(t))), dtype))
    return out


def folded(e: Entry, dtype: torch.dtype | None = None) -> Entry:
    """The scale alpha/r moved into `up`, alpha = r. diffusers and PEFT keep alphas only in their
    config (`lora_adapter_metadata` / adapter_config.json), which ComfyUI ignores: with the scale in
    the weights every loader applies the same strength."""
    scale = e.alpha / e.rank
    if scale == 1.0:
        return Entry(e.part, e.path, e.down, e.up, float(e.rank))
    return Entry(e.part, e.path, e.down, fold_scale(e.up, scale, dtype), float(e.rank))


def fold_scale(up: Tensor, scale: float, dtype: torch.dtype | None) -> Tensor:
    """up·scale rounded once, to the dtype written (`dtype`; up's own when None). Rounding first to
    the stored dtype would add a second rounding, bf16's 4× coarser than fp16's when a bf16 file is
    written as fp16, and fp16's when an fp16 file is written as fp32."""
    wide = up.to(torch.promote_types(up.dtype, torch.float32)) * scale
    return wide.to(dtype if dtype is not None else up.dtype)


def _number(x: float):
    return int(x) if float(x).is_integer() else float(x)


def lora_config(entries: list[Entry]) -> dict:
    """LoraConfig fields for one part: the most common rank/alpha, the rest as patterns."""
    r = most_common(e.rank for e in entries)
    alpha = most_common(e.alpha for e in entries)
    rank_pattern = {pattern_path(e.part, e.path): e.rank for e in entries if e.rank != r}
    alpha_pattern = {pattern_path(e.part, e.path): _number(e.alpha) for e in entries if e.alpha != alpha}
    return {"r": r, "lora_alpha": _number(alpha), "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
            "target_modules": sorted(pattern_path(e.part, e.path) for e in entries), "use_dora": False,
            "use_rslora": False, "lora_dropout": 0.0, "bias": "none", "init_lora_weights": True}


def _pattern_value(patterns: Mapping, path: str):
    """PEFT's `get_pattern_key`: the first key matching the end of the path at a dot boundary."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return None


def kohya_alpha(config: Mapping | None, part: str, path: str, rank: int) -> float:
    """The kohya alpha (scale = alpha/rank) that reproduces PEFT's scale for this module."""
    if not config:
        return float(rank)  # diffusers/PEFT without a config: W + B·A (scale 1)
    candidates = [path] + ([pattern_path(part, path), "text_model." + path] if part != "unet" else [])
    alpha = None
    for p in candidates:
        alpha = _pattern_value(config.get("alpha_pattern") or {}, p)
        if alpha is not None:
            break
    if alpha is None:
        alpha = config.get("lora_alpha", 8)
    if config.get("use_rslora"):
        return float(alpha) * math.sqrt(rank)
    return float(alpha)


def check_config(config: Mapping, source: str | None) -> None:
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise LoraKitError(f"PEFT adapter type {config.get('peft_type')} is not LoRA", source)
    if config.get("bias", "none") not in ("none", None) or config.get("lora_bias"):
        raise LoraKitError("PEFT adapters with bias training are not supported", source)
