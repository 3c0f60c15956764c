"""kohya module names that every family shares: NAME = prefix + "_" + module path with "." → "_".

Pure string work (no model, no family): which path spelling a family writes is the family's own.
"""

from __future__ import annotations

DENOISER_PREFIX = "lora_unet"  # kohya's prefix of the denoiser's modules, whatever the denoiser


def kohya_name(prefix: str, path: str) -> str:
    return prefix + "_" + path.replace(".", "_")


def te_path_for_name(path: str) -> str:
    """kohya's TE names always contain `text_model` (transformers 5 dropped it on CLIPTextModel)."""
    return path if path.startswith("text_model.") or path == "text_model" else "text_model." + path


def split_module_key(key: str) -> tuple[str, str]:
    """`lora_unet_x_y.lora_down.weight` → (`lora_unet_x_y`, `lora_down.weight`)."""
    module, dot, sub = key.partition(".")
    if not dot:
        raise ValueError(f"not a module key: {key}")
    return module, sub


def part_of(name: str) -> str:
    """Which model part a kohya module name belongs to: unet, te, te1, te2 or te3."""
    for part in ("unet", "te1", "te2", "te3", "te"):
        if name.startswith(f"lora_{part}_"):
            return part
    return "unknown"
