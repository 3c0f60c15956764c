"""SDXL: CLIP-L + OpenCLIP-bigG side by side (2048), pooled text and size time ids, 1024 px,
kohya names in the original SAI UNet spelling."""

from __future__ import annotations

from typing import Mapping, Sequence

from ... import kohya_names as names
from . import naming
from .family import UNetFamily, context_width, denoiser_config

_IMPL = "https://github.com/Stability-AI/generative-models"


class SDXL(UNetFamily):
    name, label = "sdxl", "SDXL"
    a1111_sd_version = "SDXL"
    card_colour = (160, 90, 150)
    pipeline_class = "StableDiffusionXLPipeline"
    index_defaults = {"force_zeros_for_empty_prompt": True}
    text_encoders, tokenizers = ("text_encoder", "text_encoder_2"), ("tokenizer", "tokenizer_2")
    tokenizer_pads = ("<|endoftext|>", "!")
    text_encoder_classes = ("CLIPTextModel", "CLIPTextModelWithProjection")
    te_prefixes = ("lora_te1", "lora_te2")
    prediction_types = ("epsilon", "v_prediction")
    bucket_step = 32
    checkpoint_implementation = lora_implementation = _IMPL
    checkpoint_text_encoders = (("clip", "conditioner.embedders.0.transformer."),
                                ("open_clip", "conditioner.embedders.1.model."))
    shipped_configs = {"epsilon": "sdxl-base"}
    sai_names = True
    clip_skip = "ignored"  # the penultimate layers always; sd-scripts warns that SDXL training ignores it
    context_widths, te_widths = (2048,), (768, 1280)  # CLIP-L, OpenCLIP-bigG
    base_version_prefix, architecture_prefix = "sdxl", "stable-diffusion-xl"

    tiny_unet = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                     attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
                     addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=8 * 6 + 32)
    tiny_text_encoders = (dict(hidden=32), dict(hidden=32, hidden_act="gelu"))

    def base_model_version(self, v_prediction: bool) -> str:
        return "sdxl_base_v1-0"

    def architecture(self, v_prediction: bool) -> str:
        return "stable-diffusion-xl-v1-base"

    def resolution(self, v_prediction: bool) -> int:
        return 1024

    def reference_layout(self):
        return naming.SDXL_LAYOUT

    def checkpoint_evidence(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        if not self.is_unet_checkpoint(shapes):
            return 0
        if any(k.startswith("conditioner.embedders.1.") for k in shapes) or \
                "model.diffusion_model.label_emb.0.0.weight" in shapes:
            return 4
        return 3 if context_width(shapes) == 2048 else 0

    def pipeline_evidence(self, pipe, config: Mapping | None) -> int:
        if type(pipe).__name__ == self.pipeline_class or getattr(pipe, "text_encoder_2", None) is not None:
            return 6
        cfg = denoiser_config(pipe, config)
        if cfg.get("cross_attention_dim") == 2048:
            return 5
        return 4 if cfg.get("addition_embed_type") == "text_time" else 0

    # --- conditioning --------------------------------------------------------------------------
    def encode_text(self, encoders: Sequence, tokenizers: Sequence, ids: Sequence, cached=None) -> dict:
        """The penultimate hidden states of both encoders side by side, and the second one's pooled
        projection, as StableDiffusionXLPipeline builds them."""
        import torch

        hidden, pooled = [], None
        for te, x in zip(encoders, ids):
            out = te(x.to(te.device), output_hidden_states=True)
            if out[0].ndim == 2:
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return {"hidden": torch.cat(hidden, dim=-1), "pooled": pooled}

    def extra_inputs(self, samples: Sequence) -> dict:
        """`time_ids`: original size, crop top-left and target size of each sample."""
        import torch

        from ...train.conditioning import time_ids

        return {"time_ids": torch.stack([time_ids(s.placement.original, s.crop, s.placement.bucket)
                                         for s in samples])}

    def predict(self, denoiser, noisy, t, cond: Mapping, extra: Mapping, dtype):
        added = {"text_embeds": cond["pooled"].to(dtype), "time_ids": extra["time_ids"].to(dtype)}
        return denoiser(noisy.to(dtype), t, cond["hidden"].to(dtype), return_dict=False,
                        added_cond_kwargs=added)[0]


FAMILY = SDXL()
