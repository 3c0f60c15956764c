"""Load Flux.2 as a Flux2KleinPipeline (klein) or Flux2Pipeline (dev).

- A diffusers folder or hub id: `from_pretrained` (loader.py; the registry knows both pipeline classes).
- The transformer as BFL ships it (`flux-2-klein-4b.safetensors`, `flux2-dev.safetensors`: BFL's
  `double_blocks.*`, `single_blocks.*` and the shared `*_modulation.lin`, with or without ComfyUI's
  `model.diffusion_model.`; fp8 files too): streamed a block at a time into the model built from the
  shipped config of its variant (read from the file's widths). The VAE, the LM and its tokenizer are
  not in that file: they come from `text_encoders` (a folder with vae, text_encoder, tokenizer: the
  diffusers download of the same variant will do) or the hub cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import naming as flux2_naming
from ...errors import LoraKitError
from ...models.checkpoint import Checkpoint
from ..dit.loading import flow_scheduler, gather, parts_folder, stream_transformer, transformer_names

HUB = {"klein-4b": "black-forest-labs/FLUX.2-klein-4B", "klein-9b": "black-forest-labs/FLUX.2-klein-9B",
       "dev": "black-forest-labs/FLUX.2-dev"}
_VAE = ("diffusers", "AutoencoderKLFlux2", "the VAE (vae)")
PARTS = {"klein": {"vae": _VAE, "text_encoder": ("transformers", "Qwen3ForCausalLM", "Qwen3 (text_encoder)"),
                   "tokenizer": ("transformers", "AutoTokenizer", "the Qwen tokenizer (tokenizer)")},
         "dev": {"vae": _VAE, "text_encoder": ("transformers", "Mistral3ForConditionalGeneration",
                                               "Mistral Small 3.1 (text_encoder)"),
                 "tokenizer": ("transformers", "AutoProcessor", "the Mistral processor (tokenizer)")}}
_HEADS = ("double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.", "guidance_in.", "final_layer.",
          "double_stream_modulation_", "single_stream_modulation.")


def load_transformer(ckpt: Checkpoint, config_dir: Path, dtype, base_precision: str = "auto"):
    """Streamed, a block at a time, into `dtype` or the quantized `base_precision` (dit/loading.py)."""
    import diffusers

    names = transformer_names(ckpt, flux2_naming.BFL, _HEADS)
    if "img_in.weight" not in names:
        raise LoraKitError("the file has no Flux.2 transformer (img_in.weight missing)", ckpt.path)
    return stream_transformer(ckpt, diffusers.Flux2Transformer2DModel, config_dir, names,
                              flux2_naming.bfl_state_to_diffusers, dtype, base_precision)


def build_pipeline(ckpt: Checkpoint, family, config_dir: Path, *, dtype=torch.float32,
                   text_encoders: Path | None = None, components=("unet", "text_encoders", "vae"),
                   base_precision: str = "auto"):
    """The variant's pipeline from a BFL transformer file (see the module docstring for the other parts)."""
    import diffusers

    variant = family.variant_of_shapes(ckpt.shapes)
    kind = "dev" if variant == "dev" else "klein"
    te_dir = parts_folder(text_encoders, "vae, text_encoder and tokenizer (the diffusers FLUX.2 download of the "
                                         "same variant will do)")
    wanted = [s for s, on in (("vae", "vae" in components), ("text_encoder", "text_encoders" in components),
                              ("tokenizer", "text_encoders" in components)) if on]
    parts, missing = gather(PARTS[kind], wanted, te_dir, HUB[variant], dtype, base_precision=base_precision,
                            big=family.big_text_encoders)
    if missing:
        raise LoraKitError(f"a Flux.2 file holds the transformer only; "
                           f"{', '.join(PARTS[kind][m][2] for m in missing)} not found: pass --text-encoders DIR, "
                           f"a folder with {', '.join(missing)} (e.g. the diffusers {HUB[variant]} download), or put "
                           "that repository in the Hugging Face cache", ckpt.path)
    transformer = load_transformer(ckpt, config_dir, dtype, base_precision) if "unet" in components else None
    cls = diffusers.Flux2Pipeline if kind == "dev" else diffusers.Flux2KleinPipeline
    return cls(transformer=transformer, scheduler=flow_scheduler(config_dir), **parts)
