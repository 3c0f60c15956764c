"""Load Chroma as a ChromaPipeline.

- A diffusers folder or hub id: `ChromaPipeline.from_pretrained` (loader.py).
- The transformer as lodestones ship it (`Chroma1-HD.safetensors`: BFL's `double_blocks.*` plus
  `distilled_guidance_layer.*`, with or without `model.diffusion_model.`; fp8 files too): streamed
  a block at a time into the model built from the shipped config (no network). The VAE (Flux's
  AE), T5-XXL and T5's tokenizer are not in that file: they come from `text_encoders` (a folder
  with vae, text_encoder, tokenizer: the diffusers Chroma download will do) or the hub cache.

Names go through `naming.bfl_state_to_diffusers` a block at a time (diffusers' converter fixes
the width at 3072 and wants the whole state dict).
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import naming as chroma_naming
from ...errors import LoraKitError
from ...models.checkpoint import Checkpoint
from ..dit.loading import flow_scheduler, gather, parts_folder, stream_transformer, transformer_names

HUB = "lodestones/Chroma1-HD"
PARTS = {"vae": ("diffusers", "AutoencoderKL", "the VAE (vae)"),
         "text_encoder": ("transformers", "T5EncoderModel", "T5-XXL (text_encoder)"),
         "tokenizer": ("transformers", "AutoTokenizer", "the T5 tokenizer (tokenizer)")}
_HEADS = ("double_blocks.", "single_blocks.", "img_in.", "txt_in.", "final_layer.", chroma_naming.APPROXIMATOR)


def load_transformer(ckpt: Checkpoint, config_dir: Path, dtype, base_precision: str = "auto"):
    """Streamed, a block at a time, into `dtype` or the quantized `base_precision` (dit/loading.py)."""
    import diffusers

    names = transformer_names(ckpt, chroma_naming.BFL, _HEADS)
    if "img_in.weight" not in names:
        raise LoraKitError("the file has no Chroma transformer (img_in.weight missing)", ckpt.path)
    return stream_transformer(ckpt, diffusers.ChromaTransformer2DModel, config_dir, names,
                              chroma_naming.bfl_state_to_diffusers, dtype, base_precision)


def build_pipeline(ckpt: Checkpoint, config_dir: Path, *, dtype=torch.float32, text_encoders: Path | None = None,
                   components=("unet", "text_encoders", "vae"), base_precision: str = "auto",
                   big_text_encoders: tuple[str, ...] = ()):
    """A ChromaPipeline from the single file (see the module docstring for the other parts)."""
    import diffusers

    te_dir = parts_folder(text_encoders, "vae, text_encoder and tokenizer (a diffusers Chroma folder will do)")
    wanted = [s for s, on in (("vae", "vae" in components), ("text_encoder", "text_encoders" in components),
                              ("tokenizer", "text_encoders" in components)) if on]
    parts, missing = gather(PARTS, wanted, te_dir, HUB, dtype, base_precision=base_precision,
                            big=big_text_encoders)
    if missing:
        raise LoraKitError(f"a Chroma file holds the transformer only; {', '.join(PARTS[m][2] for m in missing)} "
                           f"not found: pass --text-encoders DIR, a folder with {', '.join(missing)} (e.g. the "
                           f"diffusers {HUB} download), or put that repository in the Hugging Face cache", ckpt.path)
    transformer = load_transformer(ckpt, config_dir, dtype, base_precision) if "unet" in components else None
    return diffusers.ChromaPipeline(transformer=transformer, scheduler=flow_scheduler(config_dir), **parts)
