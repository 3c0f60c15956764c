"""Load Z-Image as a ZImagePipeline.

- A diffusers folder or hub id (Tongyi-MAI/Z-Image-Turbo, Tongyi-MAI/Z-Image): `ZImagePipeline.from_pretrained`
  (loader.py).
- The transformer as one file (ComfyUI's `z_image_turbo_bf16.safetensors`: the original names with
  q, k and v stacked, with or without `model.diffusion_model.`; fp8 files too): streamed a module at a
  time through diffusers' own converter into the model built from the shipped config (no network). The
  VAE (Flux's AE), Qwen3 and its tokenizer are not in that file: they come from `text_encoders` (a
  folder with vae, text_encoder, tokenizer: the diffusers Z-Image download will do) or the hub cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import naming as zi
from ...errors import LoraKitError
from ...models.checkpoint import Checkpoint
from ..dit.loading import flow_scheduler, gather, parts_folder, stream_transformer, transformer_names

HUB = "Tongyi-MAI/Z-Image-Turbo"
PARTS = {"vae": ("diffusers", "AutoencoderKL", "the VAE (vae)"),
         "text_encoder": ("transformers", "Qwen3Model", "Qwen3 (text_encoder)"),
         "tokenizer": ("transformers", "AutoTokenizer", "the Qwen tokenizer (tokenizer)")}
HEADS = ("layers.", "noise_refiner.", "context_refiner.", "x_embedder.", "final_layer.", "all_x_embedder.",
         "all_final_layer.", "t_embedder.", "cap_embedder.", "x_pad_token", "cap_pad_token", "siglip_")


def load_transformer(ckpt: Checkpoint, config_dir: Path, dtype, base_precision: str = "auto"):
    """Streamed, a module at a time, into `dtype` or the quantized `base_precision` (dit/loading.py)."""
    import diffusers

    names = transformer_names(ckpt, zi.BFL, HEADS)
    if "cap_embedder.1.weight" not in names:
        raise LoraKitError("the file has no Z-Image transformer (cap_embedder.1.weight missing)", ckpt.path)
    return stream_transformer(ckpt, diffusers.ZImageTransformer2DModel, config_dir, names,
                              zi.original_state_to_diffusers, dtype, base_precision)


def build_pipeline(ckpt: Checkpoint, config_dir: Path, *, dtype=torch.float32, text_encoders: Path | None = None,
                   components=("unet", "text_encoders", "vae"), base_precision: str = "auto",
                   big_text_encoders: tuple[str, ...] = ()):
    """A ZImagePipeline from the single file (see the module docstring for the other parts)."""
    import diffusers

    te_dir = parts_folder(text_encoders, "vae, text_encoder and tokenizer (a diffusers Z-Image folder will do)")
    wanted = [s for s, on in (("vae", "vae" in components), ("text_encoder", "text_encoders" in components),
                              ("tokenizer", "text_encoders" in components)) if on]
    parts, missing = gather(PARTS, wanted, te_dir, HUB, dtype, base_precision=base_precision, big=big_text_encoders)
    if missing:
        raise LoraKitError(f"a Z-Image file holds the transformer only; {', '.join(PARTS[m][2] for m in missing)} "
                           f"not found: pass --text-encoders DIR, a folder with {', '.join(missing)} (e.g. the "
                           f"diffusers {HUB} download), or put that repository in the Hugging Face cache", ckpt.path)
    transformer = load_transformer(ckpt, config_dir, dtype, base_precision) if "unet" in components else None
    return diffusers.ZImagePipeline(transformer=transformer, scheduler=flow_scheduler(config_dir), **parts)
