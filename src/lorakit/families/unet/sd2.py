"""Stable Diffusion 2.x: OpenCLIP-H text encoder (1024), 512 px epsilon or 768 px v-prediction."""

from __future__ import annotations

from typing import Mapping

import torch

from . import naming
from .family import UNET, UNetFamily, context_width, denoiser_config


class SD2(UNetFamily):
    name, label = "sd2", "SD2"
    a1111_sd_version = "SD2"
    card_colour = (90, 150, 90)
    pipeline_class = "StableDiffusionPipeline"
    pipeline_kwargs = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    text_encoders, tokenizers = ("text_encoder",), ("tokenizer",)
    tokenizer_pads = ("!",)  # OpenCLIP's tokenizer pads with "!"
    te_prefixes = ("lora_te",)
    prediction_types = ("epsilon", "v_prediction")
    bucket_step = 64
    is_v2 = True
    checkpoint_implementation = "https://github.com/Stability-AI/stablediffusion"
    checkpoint_text_encoders = (("open_clip", "cond_stage_model.model."),)
    shipped_configs = {"epsilon": "sd21-base", "v_prediction": "sd21"}
    context_widths, te_widths = (1024,), (1024,)
    base_version_prefix, architecture_prefix = "sd_v2", "stable-diffusion-v2"

    tiny_unet = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=48,
                     attention_head_dim=(2, 4), use_linear_projection=True)
    tiny_text_encoders = (dict(hidden=48),)

    def base_model_version(self, v_prediction: bool) -> str:
        return "sd_v2_v" if v_prediction else "sd_v2"

    def architecture(self, v_prediction: bool) -> str:
        return "stable-diffusion-v2-768-v" if v_prediction else "stable-diffusion-v2-512"

    def resolution(self, v_prediction: bool) -> int:
        return 768 if v_prediction else 512

    def reference_layout(self):
        return naming.SD1_LAYOUT

    def lora_metadata_evidence(self, metadata: Mapping[str, str]) -> int:
        return super().lora_metadata_evidence(metadata) or (1 if metadata.get("ss_v2") == "True" else 0)

    def checkpoint_evidence(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        if not self.is_unet_checkpoint(shapes):
            return 0
        if context_width(shapes) == 1024:
            return 3
        if any(k.startswith("cond_stage_model.model.") for k in shapes):
            return 2
        proj_in = next((v for k, v in shapes.items() if k.startswith(UNET) and k.endswith(".proj_in.weight")), None)
        sgm = any(k.startswith("conditioner.") for k in shapes)  # SDXL-style text encoders: not SD2
        return 1 if not sgm and proj_in is not None and len(proj_in) == 2 else 0  # a linear proj_in

    def pipeline_evidence(self, pipe, config: Mapping | None) -> int:
        cfg = denoiser_config(pipe, config)
        if cfg.get("cross_attention_dim") == 1024:
            return 5
        if cfg.get("use_linear_projection"):
            return 3
        te = getattr(pipe, "text_encoder", None)
        if not cfg and te is not None:
            if getattr(te.config, "hidden_size", None) == 1024 or getattr(te.config, "hidden_act", "") == "gelu":
                return 2
        return 0

    def guess_prediction_type(self, ckpt) -> str | None:
        """ComfyUI's weight test: the 768-v models end up with a spread-out norm1 bias in the last
        output block (std > 0.09), the 512 epsilon models do not. (A1111 decides with a test forward
        pass instead.) None for small models."""
        key = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
        if key not in ckpt.shapes:
            return None
        bias = ckpt.read([key])[key].float()
        return "v_prediction" if torch.std(bias, unbiased=False).item() > 0.09 else "epsilon"


FAMILY = SD2()
