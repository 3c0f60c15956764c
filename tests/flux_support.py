"""A tiny Flux.1 pipeline built from configs here (random, seeded weights), and the real-size
Flux.1-dev transformer and CLIP-L on the `meta` device for name counts."""

from __future__ import annotations

import torch

from dit_support import clip_config, evaluating, t5_config, t5_tokenizer, tiny_vae

# black-forest-labs/FLUX.1-dev transformer/config.json (schnell: guidance_embeds false)
REAL_DEV = dict(attention_head_dim=128, guidance_embeds=True, in_channels=64, joint_attention_dim=4096,
                num_attention_heads=24, num_layers=19, num_single_layers=38, patch_size=1,
                pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))

TINY_TRANSFORMER = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=8,
                        guidance_embeds=True, axes_dims_rope=(2, 2, 4))


def tiny_flux_pipeline(seed: int = 0, transformer: dict | None = None):
    """FluxPipeline with a 2 double + 2 single block transformer (guidance embedding as dev has
    it), CLIP-L-like and T5-like encoders and a 4-channel VAE (16 channels once packed 2×2)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    from lorakit.models.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    tr = FluxTransformer2DModel(**(transformer or TINY_TRANSFORMER))
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(transformer=tr, scheduler=sched, vae=tiny_vae(), text_encoder=CLIPTextModel(clip_config(8)),
                        tokenizer=clip_tokenizer(), text_encoder_2=T5EncoderModel(t5_config(32)),
                        tokenizer_2=t5_tokenizer())
    return evaluating(pipe)


def meta_transformer(config: dict | None = None):
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(**(config or REAL_DEV))


def flux_parts(pipe, with_t5: bool = False):
    from lorakit.lora import ModelParts

    tes = [pipe.text_encoder] + ([pipe.text_encoder_2] if with_t5 else [])
    return ModelParts("flux", pipe.transformer, tes, dict(pipe.transformer.config))
