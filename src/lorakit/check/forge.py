"""Forge's LoRA key rules: Forge loads LoRAs through its copy of ComfyUI's key map
(backend/patcher/lora.py imports packages_3rdparty/comfyui_lora_collection/lora.py), so a file
fares in Forge as in ComfyUI for the models both run, but for what the copy lacks or adds: no
bare diffusers-path Flux keys, no `.lora_B`/`.lora_B.default.weight` pairs, and T5 modules under
any of `lora_te1_`, `lora_te2_`, `lora_te3_` (`model_lora_keys_clip` in backend/patcher/lora.py).

Source read: lllyasviel/stable-diffusion-webui-forge @ dfdcbab685e57677014f05a3309b48cc87383167
backend/patcher/lora.py, extensions-builtin/sd_forge_lora/networks.py (`load_lora_for_models`),
packages_3rdparty/comfyui_lora_collection/lora.py (its SD3 diffusers-key branch is commented out;
Forge runs SD 1.x/2.x/XL and Flux.1).
"""

from __future__ import annotations

from functools import partial

from . import comfyui

NAME = "Forge"
SOURCE = "lllyasviel/stable-diffusion-webui-forge@dfdcbab backend/patcher/lora.py (ComfyUI's key map)"


def runs(spec) -> bool:
    return spec.denoiser == "unet" or spec.denoiser_class == "FluxTransformer2DModel"


load = partial(comfyui.load, forge=True)
