"""Load Flux.1 (dev, schnell) as a FluxPipeline.

- A diffusers folder or hub id: `FluxPipeline.from_pretrained` (loader.py).
- The transformer as BFL ships it (`flux1-dev.safetensors`: `double_blocks.*` … with or without
  ComfyUI's `model.diffusion_model.` prefix; ComfyUI's and Kijai's fp8 files too): streamed a
  block at a time into the model built from the shipped dev/schnell config (no network). The VAE, CLIP-L, T5 and T5's tokenizer are not in that
  file: they come from `text_encoders` (a diffusers-style folder with vae, text_encoder,
  text_encoder_2, tokenizer_2: the FLUX.1 download will do) or the hub cache.

Names go through `flux_naming.bfl_state_to_diffusers` a block at a time (checked row for row
against diffusers' converter, which fixes the width at 3072 and wants the whole state dict).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import LoraKitError
from ...models.checkpoint import Checkpoint
from ..dit.loading import flow_scheduler, gather, parts_folder, stream_transformer, transformer_names, write_original

BFL = "model.diffusion_model."
HUB = {"dev": "black-forest-labs/FLUX.1-dev", "schnell": "black-forest-labs/FLUX.1-schnell"}
PARTS = {"vae": ("diffusers", "AutoencoderKL", "the VAE (vae)"),
         "text_encoder": ("transformers", "CLIPTextModel", "CLIP-L (text_encoder)"),
         "text_encoder_2": ("transformers", "T5EncoderModel", "T5-XXL (text_encoder_2)"),
         "tokenizer_2": ("transformers", "AutoTokenizer", "the T5 tokenizer (tokenizer_2)")}


def variant(keys) -> str:
    """dev carries the guidance embedding; schnell does not."""
    return "dev" if any(".guidance_in." in f".{k}" for k in keys) else "schnell"


_HEADS = ("double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.",
          "final_layer.")


def load_transformer(ckpt: Checkpoint, config_dir: Path, dtype, base_precision: str = "auto"):
    """Streamed, a block at a time, into `dtype` or the quantized `base_precision` (dit/loading.py)."""
    import diffusers

    from . import naming as flux_naming

    names = transformer_names(ckpt, BFL, _HEADS)
    if "img_in.weight" not in names:
        raise LoraKitError("the file has no Flux transformer (img_in.weight missing)", ckpt.path)
    return stream_transformer(ckpt, diffusers.FluxTransformer2DModel, config_dir, names,
                              flux_naming.bfl_state_to_diffusers, dtype, base_precision)


def build_pipeline(ckpt: Checkpoint, family, *, dtype=torch.float32, config_dir: Path | None = None,
                   text_encoders: Path | None = None, components=("unet", "text_encoders", "vae"),
                   base_precision: str = "auto"):
    """A FluxPipeline from a BFL transformer file (see the module docstring for the other parts)."""
    import diffusers

    from ...models.tokenizer import clip_tokenizer

    name = variant(ckpt.shapes)
    config_dir = Path(config_dir) if config_dir is not None else family.config_dir(variant=name)
    te_dir = parts_folder(text_encoders, "vae, text_encoder, text_encoder_2 and tokenizer_2 "
                                         "(a diffusers FLUX.1 folder will do)")
    parts: dict = {"transformer": load_transformer(ckpt, config_dir, dtype, base_precision) if "unet" in components else None}
    wanted = [s for s, on in (("vae", "vae" in components), ("text_encoder", "text_encoders" in components),
                              ("text_encoder_2", "text_encoders" in components),
                              ("tokenizer_2", "text_encoders" in components)) if on]
    found, missing = gather(PARTS, wanted, te_dir, HUB[name], dtype, base_precision=base_precision,
                            big=family.big_text_encoders)
    parts.update(found)
    if missing:
        what = ", ".join(PARTS[m][2] for m in missing)
        raise LoraKitError(f"a BFL Flux file holds the transformer only; {what} not found: pass --text-encoders "
                           f"DIR, a folder with {', '.join(missing)} (e.g. the diffusers {HUB[name]} download), or "
                           "put that repository in the Hugging Face cache", ckpt.path)
    return diffusers.FluxPipeline(transformer=parts["transformer"], vae=parts["vae"], scheduler=flow_scheduler(config_dir),
                                  text_encoder=parts["text_encoder"], tokenizer=clip_tokenizer(),
                                  text_encoder_2=parts["text_encoder_2"], tokenizer_2=parts["tokenizer_2"])


def save_single_file(pipe, path, family, *, dtype=None, metadata: dict | None = None) -> Path:
    """The transformer as a BFL file (what ComfyUI, sd-scripts and diffusers' from_single_file load)."""
    from . import naming as flux_naming

    return write_original(flux_naming.diffusers_state_to_bfl(pipe.transformer.state_dict()), path,
                          architecture=family.architecture(variant=family.variant_of_config(pipe.transformer.config)),
                          implementation=family.checkpoint_implementation, dtype=dtype, metadata=metadata)
