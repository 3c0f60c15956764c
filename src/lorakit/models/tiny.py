"""Tiny pipelines of each family's layout built from configs in code (random weights).

Same classes and module layout as the real models, widths shrunk so that tests and the first
demo run in seconds on a CPU. Names, families and file formats behave exactly as on SD.
"""

from __future__ import annotations

import torch

SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 steps_offset=1, clip_sample=False, set_alpha_to_one=False, prediction_type="epsilon")


def unet_config(family: str) -> dict:
    """The tiny UNet config of a family: the shared base plus what the family changes (`tiny_unet`)."""
    from .. import families

    base = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
                norm_num_groups=8)
    return dict(base, **families.get(family).tiny_unet)


def text_config(hidden: int = 32, **extra):
    from transformers import CLIPTextConfig

    options = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                   vocab_size=49408, max_position_embeddings=77, projection_dim=32, bos_token_id=49406,
                   eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu")
    return CLIPTextConfig(**{**options, **extra})


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                layers_per_block=1, norm_num_groups=8, sample_size=32)


def tiny_pipeline(family: str | None = None, seed: int = 0):
    """The family's pipeline (the first registered one by default) with tiny widths and random, seeded weights."""
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from .. import families
    from .tokenizer import clip_tokenizer

    spec = families.get(family) if family else families.all()[0]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(family))
    vae = AutoencoderKL(**vae_config())
    scheduler = DDIMScheduler(**SCHEDULER)
    encoders = {name: getattr(transformers, cls)(text_config(**options)) for name, cls, options in
                zip(spec.text_encoders, spec.text_encoder_classes, spec.tiny_text_encoders)}
    tokenizers = {name: clip_tokenizer(pad) for name, pad in zip(spec.tokenizers, spec.tokenizer_pads)}
    pipe = getattr(diffusers, spec.pipeline_class)(vae=vae, unet=unet, scheduler=scheduler, **encoders, **tokenizers,
                                                  **spec.pipeline_kwargs)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe
