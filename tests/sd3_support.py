"""A tiny SD 3.x pipeline built from configs here (random, seeded weights), and real-size
SD3 transformers on the `meta` device for name counts."""

from __future__ import annotations

import torch

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


def clip_config(hidden: int, **extra):
    from transformers import CLIPTextConfig

    options = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
                   vocab_size=49408, max_position_embeddings=77, projection_dim=hidden, bos_token_id=49406,
                   eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu")
    return CLIPTextConfig(**{**options, **extra})


def t5_tokenizer(words=("a", "photo", "of", "sks", "dog", "cat", "on", "the", "beach", "red", "circle")):
    """A word-level T5-style tokenizer made here: the real one (sentencepiece) cannot ship."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=32)


def t5_config(d_model: int = 32):
    from transformers import T5Config

    return T5Config(vocab_size=64, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=2,
                    relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=1, is_encoder_decoder=False, use_cache=False)


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
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


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


def meta_t5xxl():
    """Real-size T5-XXL encoder (SD3's text_encoder_3, Flux's text_encoder_2) on `meta`."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    with torch.device("meta"):
        return T5EncoderModel(cfg)


def sd_scripts_names(model: str) -> dict[str, tuple[int, int]]:
    """{name: (out, in) of the layer} that sd-scripts' own networks give a real-size model
    (sd35-large, sd35-medium, sd3-medium, flux1-dev), CLIP and T5 included (as with train_t5xxl):
    recorded once by data/record_sd_scripts_names.py; data/sd_scripts_names.json says from which commit."""
    import json
    from pathlib import Path

    recorded = json.loads((Path(__file__).parent / "data" / "sd_scripts_names.json").read_text())[model]
    return {n: tuple(shape) for part in ("unet_loras", "text_encoder_loras") for n, shape in recorded[part].items()}


def names_and_shapes(targets) -> dict[str, tuple[int, int]]:
    """{name: (out, in)} of lorakit's targets, in the SAI/BFL shape a file holds."""
    return {t.name: tuple(t.module.weight.shape[:2]) for t in targets}


def sd3_parts(pipe, with_t5: bool = False):
    from lorakit.lora import ModelParts

    tes = [pipe.text_encoder, pipe.text_encoder_2] + ([pipe.text_encoder_3] if with_t5 else [])
    return ModelParts("sd3", pipe.transformer, tes, dict(pipe.transformer.config))
