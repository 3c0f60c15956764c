"""kohya module names: the key scheme A1111, ComfyUI and diffusers all read.

NAME = prefix + "_" + module path with "." replaced by "_". Which spelling a family writes (diffusers
paths for SD1/SD2, the original SAI/LDM paths for SDXL) is the family's choice (lorakit.families).
This is pure string work so that the LoRA math and the formats never need diffusers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ...kohya_names import DENOISER_PREFIX as UNET_PREFIX, kohya_name


@dataclass(frozen=True)
class UNetLayout:
    """What the diffusers → SAI path translation needs to know about a UNet."""

    layers_per_block: int
    down_has_attention: tuple[bool, ...]
    up_has_attention: tuple[bool, ...]

    @classmethod
    def from_config(cls, config: Mapping) -> "UNetLayout":
        lpb = config.get("layers_per_block", 2)
        if not isinstance(lpb, int):
            lpb = int(lpb[0])
        down = tuple("CrossAttn" in t for t in config["down_block_types"])
        up = tuple("CrossAttn" in t for t in config["up_block_types"])
        return cls(lpb, down, up)


_RESNET_SAI = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP_SAI = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet_inner(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return _RESNET_SAI.get(head, head) + ("." + tail if tail else "")


def diffusers_to_sai_unet_path(path: str, layout: UNetLayout) -> str:
    """Translate a diffusers UNet module path to the original SAI/LDM one."""
    for src, dst in _TOP_SAI.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src):]
    n = layout.layers_per_block
    m = re.match(r"down_blocks\.(\d+)\.(attentions|resnets|downsamplers)\.(\d+)\.?(.*)$", path)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            rest = rest.replace("conv", "op", 1) if rest.startswith("conv") else rest
            return f"input_blocks.{(i + 1) * (n + 1)}.0" + ("." + rest if rest else "")
        idx = i * (n + 1) + j + 1
        if kind == "resnets":
            return f"input_blocks.{idx}.0" + ("." + _resnet_inner(rest) if rest else "")
        return f"input_blocks.{idx}.1" + ("." + rest if rest else "")
    m = re.match(r"mid_block\.(attentions|resnets)\.(\d+)\.?(.*)$", path)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * j}" + ("." + _resnet_inner(rest) if rest else "")
        return "middle_block.1" + ("." + rest if rest else "")
    m = re.match(r"up_blocks\.(\d+)\.(attentions|resnets|upsamplers)\.(\d+)\.?(.*)$", path)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            slot = 2 if layout.up_has_attention[i] else 1
            return f"output_blocks.{i * (n + 1) + n}.{slot}" + ("." + rest if rest else "")
        idx = i * (n + 1) + j
        if kind == "resnets":
            return f"output_blocks.{idx}.0" + ("." + _resnet_inner(rest) if rest else "")
        return f"output_blocks.{idx}.1" + ("." + rest if rest else "")
    return path


def unet_kohya_names(path: str, layout: UNetLayout | None) -> list[str]:
    """Every kohya name a file may use for this UNet module: diffusers spelling and SAI spelling."""
    names = [kohya_name(UNET_PREFIX, path)]
    if layout is not None:
        sai = kohya_name(UNET_PREFIX, diffusers_to_sai_unet_path(path, layout))
        if sai not in names:
            names.append(sai)
    return names


# The layouts kohya's SAI names refer to when no model is at hand: SDXL base, and SD 1.x/2.x base.
SDXL_LAYOUT = UNetLayout(2, (False, True, True), (True, True, False))
SD1_LAYOUT = UNetLayout(2, (True, True, True, False), (False, True, True, True))

_SAI_TOP = {v: k for k, v in _TOP_SAI.items()}
_SAI_RESNET = {v: k for k, v in _RESNET_SAI.items()}


def _resnet_inner_back(rest: str) -> str:
    for sai, diff in _SAI_RESNET.items():
        if rest == sai or rest.startswith(sai + "."):
            return diff + rest[len(sai):]
    return rest


def sai_to_diffusers_unet_path(path: str, layout: UNetLayout = SDXL_LAYOUT) -> str:
    """Inverse of diffusers_to_sai_unet_path (paths that are not SAI come back unchanged)."""
    for src, dst in _SAI_TOP.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src):]
    n = layout.layers_per_block

    def tail(rest: str) -> str:
        return "." + rest if rest else ""

    m = re.match(r"input_blocks\.(\d+)\.(\d+)\.?(.*)$", path)
    if m:
        k, slot, rest = int(m[1]), int(m[2]), m[3]
        i, j = divmod(k - 1, n + 1)
        if j == n:
            rest = rest.replace("op", "conv", 1) if rest.startswith("op") else rest
            return f"down_blocks.{i}.downsamplers.0" + tail(rest)
        if slot == 0:
            return f"down_blocks.{i}.resnets.{j}" + tail(_resnet_inner_back(rest))
        return f"down_blocks.{i}.attentions.{j}" + tail(rest)
    m = re.match(r"middle_block\.(\d+)\.?(.*)$", path)
    if m:
        k, rest = int(m[1]), m[2]
        if k == 1:
            return "mid_block.attentions.0" + tail(rest)
        return f"mid_block.resnets.{k // 2}" + tail(_resnet_inner_back(rest))
    m = re.match(r"output_blocks\.(\d+)\.(\d+)\.?(.*)$", path)
    if m:
        k, slot, rest = int(m[1]), int(m[2]), m[3]
        i, j = divmod(k, n + 1)
        has_attn = i < len(layout.up_has_attention) and layout.up_has_attention[i]
        if slot == 0:
            return f"up_blocks.{i}.resnets.{j}" + tail(_resnet_inner_back(rest))
        if slot == 1 and has_attn:
            return f"up_blocks.{i}.attentions.{j}" + tail(rest)
        return f"up_blocks.{i}.upsamplers.0" + tail(rest)
    return path


_UNET_HEADS = ("down_blocks_", "mid_block_", "up_blocks_", "conv_in", "conv_out", "conv_norm_out", "time_embedding_",
               "add_embedding_", "input_blocks_", "middle_block_", "output_blocks_", "time_embed_", "label_emb_",
               "out_")


_DIFFUSERS_BLOCK = re.compile(r"^(down|up)_blocks_(\d+)_(attentions_)?")


def is_unet_kohya_name(name: str, layout: UNetLayout | None = None) -> bool:
    """Whether a kohya name is a UNet layer's, in diffusers or SAI spelling (SD 1.x, 2.x, XL); with
    `layout`, a diffusers-spelled block must exist in it, with attention where the name has some
    (SDXL's first down block has none, SD 1.x's has)."""
    if not name.startswith(UNET_PREFIX + "_"):
        return False
    rest = name[len(UNET_PREFIX) + 1:]
    if not rest.startswith(_UNET_HEADS):
        return False
    m = _DIFFUSERS_BLOCK.match(rest)
    if layout is None or m is None:
        return True
    blocks = layout.down_has_attention if m[1] == "down" else layout.up_has_attention
    i = int(m[2])
    return i < len(blocks) and (blocks[i] or not m[3])


def is_sai_unet_path(path: str) -> bool:
    """Whether a UNet module path is spelled the SAI/LDM way (kohya's SDXL names)."""
    return path.split(".", 1)[0] in {"input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb",
                                      "out"}
