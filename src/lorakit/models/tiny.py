"""Tiny SD1-, SD2- and SDXL-layout pipelines built from configs in code (random weights).

Same classes and module layout as the real models, widths shrunk so that tests and the first
demo run in seconds on a CPU. Names, families and file formats behave exactly as on SD.
"""

from __future__ import annotations

import torch

SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon")


def unet_config(family: str) -> dict:
    base = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
                norm_num_groups=8)
    if family == "sd1":
        return dict(base, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                    attention_head_dim=8)
    if family == "sd2":
        return dict(base, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=48,
                    attention_head_dim=(2, 4), use_linear_projection=True)
    if family == "sdxl":
        return dict(base, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                    attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
                    addition_embed_type="text_time", addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=8 * 6 + 32)
    raise ValueError(f"unknown family {family!r}")


def text_config(hidden: int, **extra):
    from transformers import CLIPTextConfig

    options = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                   vocab_size=49408, max_position_embeddings=77, projection_dim=32, bos_token_id=49406,
                   eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu")
    return CLIPTextConfig(**{**options, **extra})


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                layers_per_block=1, norm_num_groups=8, sample_size=32)


def tiny_pipeline(family: str = "sd1", seed: int = 0):
    """A StableDiffusion(XL)Pipeline of the family's layout with random, seeded weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, \
        UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(family))
    vae = AutoencoderKL(**vae_config())
    scheduler = DDIMScheduler(**SCHEDULER)
    if family == "sdxl":
        te1 = CLIPTextModel(text_config(32))
        te2 = CLIPTextModelWithProjection(text_config(32, hidden_act="gelu"))
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=clip_tokenizer(),
                                         tokenizer_2=clip_tokenizer("!"), unet=unet, scheduler=scheduler)
    else:
        te = CLIPTextModel(text_config(unet.config.cross_attention_dim))
        pad = "!" if family == "sd2" else "<|endoftext|>"
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=clip_tokenizer(pad), unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe
