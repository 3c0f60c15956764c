"""A1111's `<lora:…>` prompt tags, read as A1111/Forge and the LoRA Block Weight extension read them.

A1111 (extensions-builtin/Lora/extra_networks_lora.py, the same in Forge's sd_forge_lora at
dfdcbab6): `<lora:name:te:unet>`, named `te=` / `unet=`; te defaults to 1, unet to te. Items are
split at ":", an item with one "=" is named (modules/extra_networks.py).

LoRA Block Weight (hako-mikan/sd-webui-lora-block-weight, scripts/lora_block_weight.py at
b403cb73): `lbw=` takes a preset name or 12, 17, 20 or 26 comma-separated weights, each list
placed on its block ids (BLOCKID12/17/20/26) and the ids it does not name set to 0 (`to26`). A
module's weight is that of the block its name falls in (text encoders: BASE); a module in none
(time embedding, the last conv) keeps 1. The extension multiplies each module's up weight by it, so
the text encoder's ΔW is te·BASE and a UNet block's unet·weight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from .errors import LoraKitError

BLOCKID26 = ("BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)))
BLOCKID17 = ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", "OUT03", "OUT04", "OUT05", "OUT06",
             "OUT07", "OUT08", "OUT09", "OUT10", "OUT11")
BLOCKID12 = ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05")
BLOCKID20 = ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)))
BLOCK_IDS = {len(ids): ids for ids in (BLOCKID12, BLOCKID17, BLOCKID20, BLOCKID26)}

# the extension's DEF_WEIGHT_PRESET (17 weights: SD 1.x/2.x blocks)
PRESETS = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}

_OPEN = re.compile(r"<lora:")


@dataclass(frozen=True)
class LoraTag:
    text: str  # the tag as written
    name: str
    te: float = 1.0
    unet: float = 1.0
    blocks: Mapping[str, float] | None = None  # LBW block id → weight (all 26 ids), None without lbw=

    def params(self) -> str:
        """What follows the name in the tag, for the PNG info."""
        return self.text[len("<lora:") + len(self.name) + 1:-1]


def parse(prompt: str) -> tuple[str, list[LoraTag]]:
    """(the prompt without its `<lora:…>` tags, the tags); a malformed tag is a LoraKitError naming it."""
    tags, kept, pos = [], [], 0
    for m in _OPEN.finditer(prompt):
        if m.start() < pos:
            continue
        end = prompt.find(">", m.end())
        nxt = prompt.find("<", m.end())
        if end < 0 or 0 <= nxt < end:
            raise LoraKitError(f"prompt tag {prompt[m.start():(end + 1 if end >= 0 else None)]!r} is not closed by '>'")
        kept.append(prompt[pos:m.start()])
        tags.append(parse_tag(prompt[m.start():end + 1]))
        pos = end + 1
    kept.append(prompt[pos:])
    clean = re.sub(r"\s{2,}", " ", "".join(kept)).strip(" ,")
    return clean, tags


def parse_tag(text: str) -> LoraTag:
    items = text[len("<lora:"):-1].split(":")
    name = items[0]
    if not name.strip():
        raise LoraKitError(f"prompt tag {text}: no LoRA name")
    positional, named = [], {}
    for item in items[1:]:
        parts = item.split("=")
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    unknown = sorted(set(named) - {"te", "unet", "lbw"})
    if unknown:
        raise LoraKitError(f"prompt tag {text}: {unknown[0]}= is not supported (te=, unet=, lbw= are)")
    if len(positional) > 2:
        raise LoraKitError(f"prompt tag {text}: at most two weights (text encoder, UNet); "
                           f"the dyn rank and further items are not supported")
    te = _number(text, "te", positional[0] if positional else None, 1.0)
    te = _number(text, "te", named.get("te"), te)
    unet = _number(text, "unet", positional[1] if len(positional) > 1 else None, te)
    unet = _number(text, "unet", named.get("unet"), unet)
    blocks = block_weights(text, named["lbw"]) if "lbw" in named else None
    return LoraTag(text, name, te, unet, blocks)


def _number(text: str, what: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise LoraKitError(f"prompt tag {text}: the {what} weight {value!r} is not a number") from None


def block_weights(text: str, value: str) -> dict[str, float]:
    """`lbw=` → {block id: weight} over the 26 ids, as the extension's `to26` places a list."""
    weights = PRESETS.get(value, value).split(",")
    if len(weights) == 1:
        raise LoraKitError(f"prompt tag {text}: unknown block weight preset {value!r} "
                           f"(presets: {', '.join(PRESETS)})")
    ids = BLOCK_IDS.get(len(weights))
    if ids is None:
        raise LoraKitError(f"prompt tag {text}: {len(weights)} block weights; lbw= takes 17 (SD 1.x/2.x), "
                           f"12 (SDXL), 20 or 26")
    out = dict.fromkeys(BLOCKID26, 0.0)
    for block, w in zip(ids, weights):
        try:
            out[block] = float(w)
        except ValueError:
            raise LoraKitError(f"prompt tag {text}: block weight {w.strip()!r} is not a number") from None
    return out


def module_scales(tag: LoraTag, net, parts) -> dict[str, float]:
    """{adapter name: strength} of a network loaded at multiplier 1: te or unet, times its block's weight."""
    family = parts.spec
    if tag.blocks is not None and not family.lbw_blocks:
        raise LoraKitError(f"prompt tag {tag.text}: lbw= block weights are for SD 1.x/2.x/XL UNets, "
                           f"the model is {family.label}")
    layout = family.denoiser_layout(parts.unet_config) if tag.blocks is not None else None
    out = {}
    for name, target in net.targets.items():
        unet = target.part == "unet"
        w = tag.unet if unet else tag.te
        if tag.blocks is not None:
            block = family.lbw_block(target, layout)
            w *= 1.0 if block is None else tag.blocks[block]
        out[name] = w
    return out
