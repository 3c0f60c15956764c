"""What lorakit means by each module of a file: the layer it names (as a kohya name) and the
strength it is applied at (alpha / rank, the alpha from the file's `.alpha` key, else from
diffusers' `lora_adapter_metadata`, else alpha = rank)."""

from __future__ import annotations

from typing import Mapping

from .. import families
from ..formats import diffusers_fmt
from ..formats.paths import kohya_part, path_to_kohya
from ..formats.peft_common import kohya_alpha
from .filekeys import FileKeys

KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")


def kohya_name(stem: str, keys: Mapping[str, str], family: str) -> str | None:
    """The kohya name lorakit reads a stem as (whether or not such a layer exists); None when
    lorakit reads no layer from it."""
    if stem.startswith(KOHYA_PREFIXES):
        return stem
    spec = families.get(family)
    own = getattr(spec, "lora_layouts", None)
    if own is not None:
        return own.FILES.kohya_of_key_module(stem)
    for key in keys.values():
        parsed = diffusers_fmt.parse_key(key)
        if parsed is not None:
            part, path, _ = parsed
            try:
                return path_to_kohya(kohya_part(part, family), path, family)
            except (ValueError, KeyError):
                return None
    return None


def meant_scale(fk: FileKeys, stem: str, keys: Mapping[str, str]) -> float | None:
    """alpha / rank as lorakit applies the module; None for kinds without a rank (full diffs)."""
    rank = fk.rank(keys)
    if rank is None:
        return None
    if ".alpha" in keys:
        return fk.alphas.get(keys[".alpha"], rank) / rank
    for key in keys.values():
        parsed = diffusers_fmt.parse_key(key)
        if parsed is not None:
            part, path, _ = parsed
            config = diffusers_fmt.part_configs(fk.metadata).get(part)
            if config is None:  # DiT families: the component is named as in the file
                config = diffusers_fmt.component_configs(fk.metadata).get(stem.split(".", 1)[0])
            return kohya_alpha(config, part, path, rank) / rank
    head = stem.split(".", 1)[0]
    config = diffusers_fmt.component_configs(fk.metadata).get(head)
    if config is not None:
        return kohya_alpha(config, "unet", stem.split(".", 1)[-1], rank) / rank
    return 1.0
