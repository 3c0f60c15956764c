"""musubi-tuner's LoRA key rules for FLUX.1 (Kontext), as its generation script merges a LoRA
into the transformer's weights while loading them.

Source read: kohya-ss/musubi-tuner @ 30c658c4f4b0bf05038b3346eff9670259b10fc7
src/musubi_tuner/utils/lora_utils.py (`load_safetensors_with_lora_and_fp8`, `detect_network_type`),
src/musubi_tuner/networks/lora_flux.py, networks/lora.py (`create_network_from_weights`).

The rules, as the source has them:
- For every weight `W` of the transformer (BFL names: `double_blocks.0.img_attn.qkv.weight`) it
  looks for `lora_unet_<W's path with _>.lora_down.weight` and `.lora_up.weight`; both must be
  there. The whole file is read as LoHa when any key has `hada_w1_a`, LoKr for `lokr_w1`.
- No text-encoder LoRA: `lora_te…` modules are not applied; neither are diffusers/PEFT keys.
- Strength: alpha / rank, alpha = rank without the `.alpha` key.
"""

from __future__ import annotations

from .filekeys import FileKeys
from .outcome import Outcome, kohya_groups, scale

NAME = "musubi-tuner"
SOURCE = "kohya-ss/musubi-tuner@30c658c src/musubi_tuner/utils/lora_utils.py, networks/lora_flux.py"

_ARCHITECTURES = frozenset({"FluxTransformer2DModel"})  # FLUX.1 Kontext shares Flux.1's transformer


def runs(spec) -> bool:
    return spec.denoiser_class in _ARCHITECTURES


def load(fk: FileKeys, u) -> Outcome:
    out = Outcome()
    weights = {n for n in kohya_groups(u) if n.startswith("lora_unet_")}
    grouped: dict[str, dict[str, str]] = {}
    for key in fk.shapes:
        name, _, sub = key.partition(".")
        grouped.setdefault(name, {})["." + sub] = key
    for name, keys in grouped.items():
        if name.startswith("lora_te"):
            out.skip(keys.values(), "musubi-tuner applies no text-encoder LoRA")
        elif name not in weights:
            out.skip(keys.values(), "no transformer weight has this name")
        elif ".lora_down.weight" not in keys or ".lora_up.weight" not in keys:
            out.skip(keys.values(), "needs both lora_down and lora_up")
        else:
            out.applied[name] = scale(fk, keys, fk.shapes[keys[".lora_down.weight"]][0])
    return out
