"""What the DiT families' tests share: tiny CLIP/T5 encoders and a tiny VAE built from configs here
(random, seeded weights), real-size encoders on the `meta` device for name counts, a random LoRA
network, the names sd-scripts gives a real-size model, and a pipeline put in eval mode. Each
family's own support module (sd3_support, flux_support, chroma_support) builds its tiny pipeline
from these."""

from __future__ import annotations

import torch


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


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=32, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)


def meta_clip_l():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                         projection_dim=768, hidden_act="quick_gelu")
    with torch.device("meta"):
        return CLIPTextModel(cfg)


def random_net(parts, rank=4, alpha=2.0, seed=1, std=0.2, **kw):
    from lorakit.lora import LoRANetwork

    net = LoRANetwork.create(parts, rank=rank, alpha=alpha, **kw)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std)
    return net


def evaluating(pipe):
    """The pipeline with every module in eval mode (as a loaded pipeline is)."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return pipe


def fixed_batch(model_dir, image_dir, lora=None):
    """One fixed flow-matching batch: (model, noisy latents, σ, conditioning, target) for the training
    image (32 px) 8 times, 8 fixed σ and fixed noise; with `lora` merged into the model when given."""
    from PIL import Image

    from lorakit.formats import load_network
    from lorakit.models import load_model
    from lorakit.train.conditioning import Conditioner, encode_pixels
    from lorakit.train.flow_matching import FlowMatching

    model = load_model(str(model_dir))
    pipe = model.pipe
    img = torch.tensor(list(Image.open(image_dir / "img0.png").convert("RGB").getdata()), dtype=torch.float32)
    px = (img.view(32, 32, 3).permute(2, 0, 1)[None] / 127.5 - 1).repeat(8, 1, 1, 1)
    latents = encode_pixels(pipe.vae, px, model.spec)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    sigmas = torch.linspace(0.15, 0.95, 8)
    cond = Conditioner(pipe, model.family).encode([(image_dir / "img0.txt").read_text()] * 8)
    if lora is not None:
        load_network(model.parts(), lora).merge()
    return model, FlowMatching.noisy(latents, noise, sigmas), sigmas, cond, FlowMatching.target(latents, noise)


def fixed_batch_loss(model_dir, image_dir, lora=None) -> float:
    """The loss on `fixed_batch` through the family's own denoiser call."""
    model, noisy, sigmas, cond, target = fixed_batch(model_dir, image_dir, lora)
    with torch.no_grad():
        pred = model.spec.predict(model.pipe.transformer, noisy, sigmas * 1000, cond, {}, torch.float32)
    return float(torch.nn.functional.mse_loss(pred, target))
