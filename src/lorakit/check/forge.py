"""Forge's LoRA key rules: Forge loads LoRAs through its copy of ComfyUI's key map
(backend/patcher/lora.py imports packages_3rdparty/comfyui_lora_collection/lora.py), so a file
fares in Forge as in ComfyUI for the models both run.

Source read: lllyasviel/stable-diffusion-webui-forge @ dfdcbab685e57677014f05a3309b48cc87383167
backend/patcher/lora.py, extensions-builtin/sd_forge_lora/networks.py (`load_lora_for_models`),
packages_3rdparty/comfyui_lora_collection/lora.py (its SD3 diffusers-key branch is commented out;
Forge runs SD 1.x/2.x/XL and Flux.1).
"""

from __future__ import annotations

from . import comfyui

NAME = "Forge"
SOURCE = "lllyasviel/stable-diffusion-webui-forge@dfdcbab backend/patcher/lora.py (ComfyUI's key map)"


def runs(spec) -> bool:
    return spec.denoiser == "unet" or spec.denoiser_class == "FluxTransformer2DModel"


load = comfyui.load
