"""A tiny Flux.2 klein pipeline built from its config (random, seeded weights): a 2 double + 2 single
block transformer, a 28-layer Qwen3 of width 8 (the pipeline reads layers 9, 18, 27), a word-level
tokenizer with a Qwen-style chat template, and a 4-channel AutoencoderKLFlux2 (16 once patchified);
the real-size transformers on the `meta` device."""

from __future__ import annotations

import torch

from dit_support import evaluating

LM_WIDTH = 8
TINY_TRANSFORMER = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=3 * LM_WIDTH, timestep_guidance_channels=32,
                        mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False)
CHAT = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


def qwen_tokenizer(words=("a", "photo", "of", "sks", "dog", "cat", "on", "the", "beach", "red", "circle", "user",
                          "assistant")):
    """A word-level tokenizer with a chat template (Qwen's own cannot ship), padding with id 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<unk>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", unk_token="<unk>",
                                   model_max_length=512, chat_template=CHAT)


def tiny_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=32, hidden_size=LM_WIDTH, intermediate_size=16, num_hidden_layers=28,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=512,
                      tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg)


def tiny_flux2_vae():
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(latent_channels=4, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
                             sample_size=32)
    with torch.no_grad():  # batch-norm statistics that are not the identity, so the normalization shows
        vae.bn.running_mean.copy_(torch.linspace(-0.2, 0.2, 16))
        vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, 16))
    return vae


def tiny_flux2_pipeline(seed: int = 0, transformer: dict | None = None):
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    torch.manual_seed(seed)
    tr = Flux2Transformer2DModel(**{**TINY_TRANSFORMER, **(transformer or {})})
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = Flux2KleinPipeline(transformer=tr, scheduler=sched, vae=tiny_flux2_vae(), text_encoder=tiny_qwen3(),
                              tokenizer=qwen_tokenizer(), is_distilled=False)
    return evaluating(pipe)


def meta_transformer(variant: str = "klein-4b"):
    """A real-size transformer from the shipped config of `variant` (no memory)."""
    from diffusers import Flux2Transformer2DModel

    from lorakit.families.flux2.family import FAMILY

    config = Flux2Transformer2DModel.load_config(str(FAMILY.config_dir(variant=variant)), subfolder="transformer")
    with torch.device("meta"):
        return Flux2Transformer2DModel.from_config(config)


def flux2_parts(pipe):
    from lorakit.lora import ModelParts

    return ModelParts("flux2", pipe.transformer, [], dict(pipe.transformer.config))
