"""A tiny SD 3.x pipeline built from configs here (random, seeded weights), and real-size
SD3 transformers on the `meta` device for name counts."""

from __future__ import annotations

import torch

from dit_support import clip_config, evaluating, t5_config, t5_tokenizer

# the real SD 3.x transformer configs (stabilityai/* transformer/config.json)
REAL = {
    "sd35-large": dict(attention_head_dim=64, caption_projection_dim=2432, in_channels=16, joint_attention_dim=4096,
                       num_attention_heads=38, num_layers=38, out_channels=16, patch_size=2,
                       pooled_projection_dim=2048, pos_embed_max_size=192, qk_norm="rms_norm", sample_size=128),
    "sd35-medium": dict(attention_head_dim=64, caption_projection_dim=1536, in_channels=16, joint_attention_dim=4096,
                        num_attention_heads=24, num_layers=24, out_channels=16, patch_size=2,
                        pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm", sample_size=128,
                        dual_attention_layers=tuple(range(13))),
    "sd3-medium": dict(attention_head_dim=64, caption_projection_dim=1536, in_channels=16, joint_attention_dim=4096,
                       num_attention_heads=24, num_layers=24, out_channels=16, patch_size=2,
                       pooled_projection_dim=2048, pos_embed_max_size=192, sample_size=128),
}

TINY_TRANSFORMER = dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=3,
                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                        caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=16,
                        qk_norm="rms_norm", dual_attention_layers=(0,))


def tiny_sd3_pipeline(seed: int = 0, transformer: dict | None = None):
    """StableDiffusion3Pipeline with a 3-block MMDiT (block 0 with SD3.5-medium's second attention),
    CLIP-L and CLIP-G (with projections), a tiny T5 and a 16-channel VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, \
        StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    from lorakit.models.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    tr = SD3Transformer2DModel(**(transformer or TINY_TRANSFORMER))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=32, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305)
    te1 = CLIPTextModelWithProjection(clip_config(8))
    te2 = CLIPTextModelWithProjection(clip_config(8, hidden_act="gelu"))
    te3 = T5EncoderModel(t5_config(32))
    pipe = StableDiffusion3Pipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=te1, tokenizer=clip_tokenizer(), text_encoder_2=te2,
                                    tokenizer_2=clip_tokenizer("!"), text_encoder_3=te3, tokenizer_3=t5_tokenizer())
    return evaluating(pipe)


def meta_transformer(name: str):
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        return SD3Transformer2DModel(**REAL[name])


def meta_clips():
    """Real-size CLIP-L and CLIP-G (SD3's text_encoder and text_encoder_2) on `meta`."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    l_cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                           projection_dim=768, hidden_act="quick_gelu")
    g_cfg = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                           projection_dim=1280, hidden_act="gelu")
    with torch.device("meta"):
        return CLIPTextModelWithProjection(l_cfg), CLIPTextModelWithProjection(g_cfg)


def sd3_parts(pipe, with_t5: bool = False):
    from lorakit.lora import ModelParts

    tes = [pipe.text_encoder, pipe.text_encoder_2] + ([pipe.text_encoder_3] if with_t5 else [])
    return ModelParts("sd3", pipe.transformer, tes, dict(pipe.transformer.config))
