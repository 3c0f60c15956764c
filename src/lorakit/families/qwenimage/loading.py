"""Load Qwen-Image as a QwenImagePipeline.

- A diffusers folder or hub id: `QwenImagePipeline.from_pretrained` (loader.py).
- The transformer as Comfy-Org ships it (`qwen_image_bf16.safetensors`, fp8 ones too): diffusers'
  own names (its single-file loader maps them by identity), sometimes under `model.diffusion_model.`;
  streamed a block at a time into the model built from the shipped config. The VAE, Qwen2.5-VL and
  its tokenizer are not in that file: they come from `text_encoders` (a folder with vae,
  text_encoder, tokenizer: the diffusers Qwen-Image download will do) or the hub cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import naming as qwen_naming
from ...errors import LoraKitError
from ...models.checkpoint import Checkpoint
from ..dit.loading import flow_scheduler, gather, parts_folder, stream_transformer, transformer_names

HUB = "Qwen/Qwen-Image"
PARTS = {"vae": ("diffusers", "AutoencoderKLQwenImage", "the VAE (vae)"),
         "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration", "Qwen2.5-VL (text_encoder)"),
         "tokenizer": ("transformers", "AutoTokenizer", "the Qwen2 tokenizer (tokenizer)")}
_HEADS = ("transformer_blocks.", "img_in.", "txt_in.", "txt_norm.", "time_text_embed.", "norm_out.", "proj_out.")


def load_transformer(ckpt: Checkpoint, config_dir: Path, dtype, base_precision: str = "auto"):
    """Streamed, a block at a time, into `dtype` or the quantized `base_precision` (dit/loading.py)."""
    import diffusers

    names = transformer_names(ckpt, qwen_naming.BFL, _HEADS)
    if "txt_norm.weight" not in names:
        raise LoraKitError("the file has no Qwen-Image transformer (txt_norm.weight missing)", ckpt.path)
    return stream_transformer(ckpt, diffusers.QwenImageTransformer2DModel, config_dir, names, dict, dtype,
                              base_precision)


def build_pipeline(ckpt: Checkpoint, config_dir: Path, *, dtype=torch.float32, text_encoders: Path | None = None,
                   components=("unet", "text_encoders", "vae"), base_precision: str = "auto",
                   big_text_encoders: tuple[str, ...] = ()):
    """A QwenImagePipeline from the single file (see the module docstring for the other parts)."""
    import diffusers

    te_dir = parts_folder(text_encoders, "vae, text_encoder and tokenizer (a diffusers Qwen-Image folder will do)")
    wanted = [s for s, on in (("vae", "vae" in components), ("text_encoder", "text_encoders" in components),
                              ("tokenizer", "text_encoders" in components)) if on]
    parts, missing = gather(PARTS, wanted, te_dir, HUB, dtype, base_precision=base_precision,
                            big=big_text_encoders)
    if missing:
        raise LoraKitError(f"a Qwen-Image file holds the transformer only; {', '.join(PARTS[m][2] for m in missing)} "
                           f"not found: pass --text-encoders DIR, a folder with {', '.join(missing)} (e.g. the "
                           f"diffusers {HUB} download), or put that repository in the Hugging Face cache", ckpt.path)
    transformer = load_transformer(ckpt, config_dir, dtype, base_precision) if "unet" in components else None
    return diffusers.QwenImagePipeline(transformer=transformer, scheduler=flow_scheduler(config_dir), **parts)
