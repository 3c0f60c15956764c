"""A tiny Qwen-Image pipeline built from its configs (random, seeded weights): a 2-block transformer,
a 2-layer Qwen2.5-VL, a small video VAE and a word-level tokenizer made here that splits Qwen's
chat template into the 34 tokens the pipeline drops; the real-size transformer on `meta`."""

from __future__ import annotations

import torch

from dit_support import evaluating

TINY_TRANSFORMER = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=8,
                        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(2, 2, 4))
_TEMPLATE_WORDS = ("system", "Describe", "the", "image", "by", "detailing", "color", "shape", "size", "texture",
                   "quantity", "text", "spatial", "relationships", "of", "objects", "and", "background", "user",
                   "assistant", ",", ":", "\n")
WORDS = ("a", "photo", "sks", "dog", "cat", "on", "beach", "red", "circle", "blue", "square")


def qwen_tokenizer():
    """Qwen's special tokens, one id per word, newlines kept: the template's prefix is 34 tokens as
    with Qwen's own BPE tokenizer (which is not shipped here)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<unk>": 3}
    for w in _TEMPLATE_WORDS + WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
                                                 pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\n"), behavior="isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", unk_token="<unk>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=1058)


def tiny_text_encoder():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64, max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}, bos_token_id=0, eos_token_id=2,
                         pad_token_id=0),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0]),
        vocab_size=64, hidden_size=32, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    return Qwen2_5_VLForConditionalGeneration(cfg)


def tiny_qwen_vae():
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False])


def tiny_qwenimage_pipeline(seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    torch.manual_seed(seed)
    tr = QwenImageTransformer2DModel(**TINY_TRANSFORMER)
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                            base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                            time_shift_type="exponential")
    pipe = QwenImagePipeline(transformer=tr, scheduler=sched, vae=tiny_qwen_vae(), text_encoder=tiny_text_encoder(),
                             tokenizer=qwen_tokenizer())
    return evaluating(pipe)


def meta_transformer():
    """The real-size transformer from the shipped config (20 B parameters, no memory)."""
    from diffusers import QwenImageTransformer2DModel

    from lorakit.families.qwenimage.family import FAMILY

    config = QwenImageTransformer2DModel.load_config(str(FAMILY.config_dir()), subfolder="transformer")
    with torch.device("meta"):
        return QwenImageTransformer2DModel.from_config(config)


def qwen_parts(pipe):
    from lorakit.lora import ModelParts

    return ModelParts("qwenimage", pipe.transformer, [], dict(pipe.transformer.config))
