"""Stable Diffusion 1.x: CLIP-L text encoder (768), epsilon, 512 px, kohya names in diffusers spelling."""

from __future__ import annotations

from typing import Mapping

from . import naming
from .family import UNET, UNetFamily, context_width, denoiser_config


class SD1(UNetFamily):
    name, label = "sd1", "SD1"
    a1111_sd_version = "SD1"
    card_colour = (70, 110, 170)
    pipeline_class = "StableDiffusionPipeline"
    pipeline_kwargs = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    text_encoders, tokenizers, tokenizer_pads = ("text_encoder",), ("tokenizer",), ("<|endoftext|>",)
    te_prefixes = ("lora_te",)
    prediction_types = ("epsilon", "v_prediction")
    bucket_step = 64
    checkpoint_implementation = "https://github.com/CompVis/stable-diffusion"
    checkpoint_text_encoders = (("clip", "cond_stage_model.transformer."),)
    shipped_configs = {"epsilon": "sd15"}
    context_widths, te_widths = (768,), (768,)
    base_version_prefix, architecture_prefix = "sd_v1", "stable-diffusion-v1"

    tiny_unet = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8)
    tiny_text_encoders = (dict(hidden=32),)

    def base_model_version(self, v_prediction: bool) -> str:
        return "sd_v1"

    def architecture(self, v_prediction: bool) -> str:
        return "stable-diffusion-v1"

    def resolution(self, v_prediction: bool) -> int:
        return 512

    def reference_layout(self):
        return naming.SD1_LAYOUT

    def checkpoint_evidence(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        if not self.is_unet_checkpoint(shapes):
            return 0
        if context_width(shapes) == 768:
            return 3
        if any(k.startswith("cond_stage_model.transformer.") for k in shapes):
            return 2
        proj_in = next((v for k, v in shapes.items() if k.startswith(UNET) and k.endswith(".proj_in.weight")), None)
        sgm = any(k.startswith("conditioner.") for k in shapes)  # SDXL-style text encoders: not SD1
        return 1 if not sgm and (proj_in is None or len(proj_in) != 2) else 0  # a conv proj_in: SD1's blocks

    def pipeline_evidence(self, pipe, config: Mapping | None) -> int:
        if config is None and getattr(pipe, "unet", None) is None and not hasattr(pipe, "unet"):
            return 0
        return 5 if denoiser_config(pipe, config).get("cross_attention_dim") == 768 else 1  # 1: the fallback


FAMILY = SD1()
