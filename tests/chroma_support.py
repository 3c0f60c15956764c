"""A tiny Chroma pipeline built from its config (random, seeded weights), the real-size transformer
on the `meta` device, and Chroma's model parts; the VAE and T5 are Flux's and SD3's test ones."""

from __future__ import annotations

import torch

from dit_support import evaluating, t5_config, t5_tokenizer, tiny_vae

TINY_TRANSFORMER = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8,
                        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(2, 2, 4),
                        approximator_num_channels=8, approximator_hidden_dim=16, approximator_layers=2)


def tiny_chroma_pipeline(seed: int = 0):
    """ChromaPipeline with a 2 double + 2 single block transformer, a T5-like encoder and a
    4-channel VAE (16 channels once packed 2×2)."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5EncoderModel

    torch.manual_seed(seed)
    tr = ChromaTransformer2DModel(**TINY_TRANSFORMER)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = ChromaPipeline(transformer=tr, scheduler=sched, vae=tiny_vae(), text_encoder=T5EncoderModel(t5_config(32)),
                          tokenizer=t5_tokenizer())
    return evaluating(pipe)


def meta_transformer():
    """The real-size transformer from the shipped config (8.9 B parameters, no memory)."""
    from diffusers import ChromaTransformer2DModel

    from lorakit.families.chroma.family import FAMILY

    config = ChromaTransformer2DModel.load_config(str(FAMILY.config_dir()), subfolder="transformer")
    with torch.device("meta"):
        return ChromaTransformer2DModel.from_config(config)


def chroma_parts(pipe, with_t5: bool = False):
    from lorakit.lora import ModelParts

    return ModelParts("chroma", pipe.transformer, [pipe.text_encoder] if with_t5 else [], dict(pipe.transformer.config))
