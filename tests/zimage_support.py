"""A tiny Z-Image pipeline built from its config (random, seeded weights): a 2-block transformer, a
tiny Qwen3 and a word-level tokenizer with Qwen's chat template made here (the real ones cannot ship),
Flux's test VAE; the real-size transformer on the `meta` device."""

from __future__ import annotations

import torch

from dit_support import evaluating, tiny_vae

TINY_TRANSFORMER = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2,
                        n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=24, axes_dims=[4, 6, 6],
                        axes_lens=[160, 32, 32])
# Qwen3's chat template as ZImagePipeline calls it (thinking on: nothing after the assistant tag)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
                 "{% endif %}")
WORDS = ("a", "photo", "of", "sks", "dog", "cat", "on", "the", "beach", "red", "circle", "user", "assistant")


def qwen_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", unk_token="<unk>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=32)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def qwen_config(hidden: int = 24):
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=32, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=12, max_position_embeddings=64,
                       tie_word_embeddings=True, pad_token_id=0)


def tiny_zimage_pipeline(seed: int = 0):
    """ZImagePipeline with a 2-layer (+1+1 refiner) transformer of width 32, a 3-layer Qwen3 of width 24
    and a 4-channel VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    torch.manual_seed(seed)
    tr = ZImageTransformer2DModel(**TINY_TRANSFORMER)
    with torch.no_grad():  # diffusers starts the pad tokens at zero; give them values a test can see
        tr.x_pad_token.normal_()
        tr.cap_pad_token.normal_()
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(transformer=tr, scheduler=sched, vae=tiny_vae(), text_encoder=Qwen3Model(qwen_config()),
                          tokenizer=qwen_tokenizer())
    return evaluating(pipe)


def meta_transformer():
    """The real-size transformer from the shipped config (6.15 B parameters, no memory)."""
    from diffusers import ZImageTransformer2DModel

    from lorakit.families.zimage.family import FAMILY

    config = ZImageTransformer2DModel.load_config(str(FAMILY.config_dir()), subfolder="transformer")
    with torch.device("meta"):
        return ZImageTransformer2DModel.from_config(config)


def zimage_parts(pipe):
    from lorakit.lora import ModelParts

    return ModelParts("zimage", pipe.transformer, [], dict(pipe.transformer.config))
