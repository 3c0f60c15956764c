"""Chroma (lodestones/Chroma): Flux.1-schnell with its modulation Linears pruned and replaced by one
approximator MLP, T5-XXL only (no CLIP, no pooled vector), no guidance input.

ComfyUI models it as a subclass of Flux, and so does this family: packing, position ids, presets,
the LoRA file layouts and the BFL names are Flux.1's (`families/flux`), minus the pruned layers
(`naming.py`). What differs is asked here: the T5 prompt with its attention mask (512 tokens, the
mask keeping the real tokens and one pad token, as `ChromaPipeline` encodes it), no guidance
value, and timesteps sampled without Flux's resolution shift: sd-scripts recommends
`--timestep_sampling sigmoid` (σ = sigmoid(N(0, 1))) for Chroma, which is the trainer's default
logit-normal weighting scheme unshifted. The approximator stays frozen and gets no LoRA, as in
sd-scripts, whose LoRA adapts the double and single blocks only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from . import layouts as chroma_layouts
from . import naming as chroma_naming
from ...errors import LoraKitError
from ..base import CONFIGS_DIR, Family
from ..dit.targets import transformer_targets
from ..dit.text import tokenize
from ..flux.family import Flux, unpack

_IMPL = "https://huggingface.co/lodestones/Chroma"
T5_TOKENS = 512  # ChromaPipeline's max_sequence_length (and sd-scripts' t5xxl_max_token_length)


class Chroma(Flux):
    lora_layouts = chroma_layouts  # Flux.1's layouts with Chroma's layers and text encoder
    name, label = "chroma", "Chroma"
    pipeline_class = "ChromaPipeline"
    denoiser_class = "ChromaTransformer2DModel"
    text_encoders, tokenizers = ("text_encoder",), ("tokenizer",)
    tokenizer_pads = (None,)  # T5's tokenizer cannot ship
    te_prefixes = t5_te_prefixes = ("lora_te3",)  # sd-scripts keeps Flux's T5 prefix for Chroma
    frozen_text_encoders = ("text_encoder",)
    big_text_encoders = ("text_encoder",)  # T5-XXL: stored in --base-precision with the denoiser
    frozen_outputs = ("t5",)
    checkpoint_implementation = lora_implementation = _IMPL
    lora_formats = ("kohya", "diffusers", "comfyui")
    lora_width_probes = tuple(p for p in Flux.lora_width_probes if p[0] != "lora_te1")
    sample_steps, sample_guidance = 35, 5.0  # ChromaPipeline's defaults (real classifier-free guidance)

    def training_defaults(self, v_prediction: bool, denoiser_config: Mapping) -> dict:
        return Family.training_defaults(self, v_prediction, denoiser_config)

    # --- metadata -------------------------------------------------------------------------------
    def base_model_version(self, v_prediction: bool = False) -> str:
        return "chroma"  # sd-scripts' flux_utils.MODEL_VERSION_CHROMA

    def architecture(self, v_prediction: bool = False, variant: str | None = None) -> str:
        return "chroma"  # sd-scripts' sai_model_spec.ARCH_FLUX_1_CHROMA

    def model_lora_metadata(self, denoiser_config: Mapping) -> dict[str, str]:
        return {}

    def lora_metadata(self, v_prediction: bool, previous: Mapping[str, str] | None = None) -> dict[str, str]:
        return Family.lora_metadata(self, v_prediction, previous)

    def lora_metadata_evidence(self, metadata: Mapping[str, str]) -> int:
        return 9 if "chroma" in (metadata.get("ss_base_model_version", ""),
                                 metadata.get("modelspec.architecture", "").split("/")[0]) else 0

    # --- detection ------------------------------------------------------------------------------
    def is_denoiser_lora_name(self, name: str) -> bool:
        return chroma_naming.is_kohya_name(name)

    def checkpoint_evidence(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        """Above Flux's 8: the file has BFL's blocks and the approximator."""
        has = lambda head: any(k.startswith((head, chroma_naming.BFL + head)) for k in shapes)  # noqa: E731
        return 9 if has("double_blocks.") and has(chroma_naming.APPROXIMATOR) else 0

    # --- files ----------------------------------------------------------------------------------
    def config_dir(self, prediction_type: str = "flow_matching", ckpt=None, variant: str | None = None) -> Path:
        return CONFIGS_DIR / "chroma"

    def pipeline_from_checkpoint(self, ckpt, config_dir, *, dtype, prediction_type: str, components,
                                 base_precision: str = "auto", **options):
        from .loading import build_pipeline

        return build_pipeline(ckpt, Path(config_dir), dtype=dtype, text_encoders=options.get("text_encoders"),
                              components=components, base_precision=base_precision,
                              big_text_encoders=self.big_text_encoders)

    def to_original(self, denoiser=None, denoiser_config=None, vae=None, vae_config=None,
                    text_encoders: list | None = None) -> dict:
        """The transformer as lodestones ship it (the VAE and T5 are separate files)."""
        return chroma_naming.diffusers_state_to_bfl(denoiser)

    # --- LoRA files: Flux.1's layouts, Chroma's layers and text encoder (`layouts.py`) -----------
    def check_lora_names(self, modules: Mapping, source: str | None) -> None:
        unknown = sorted(n for n in modules if not self.has_lora_module(n))
        if unknown:
            more = f" … and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise LoraKitError(f"{len(unknown)} module(s) are not layers of Chroma's transformer or T5 (Chroma has "
                               f"no modulation layers and no CLIP): {', '.join(unknown[:5])}{more}", source)

    def write_lora(self, modules: Mapping, layout: str, dtype, source: str | None):
        self.check_lora_names(modules, source)
        return super().write_lora(modules, layout, dtype, source)

    def denoiser_targets(self, transformer):
        return transformer_targets(transformer, chroma_naming)

    # --- training -------------------------------------------------------------------------------
    def timestep_shift(self, scheduler_config: Mapping, height: int, width: int) -> None:
        """None: σ unshifted, sd-scripts' `sigmoid` sampling recommended for Chroma (see the module docstring)."""
        return None

    def tokenize(self, tokenizers: Sequence, captions: Sequence[str]) -> list:
        """T5 ids padded to 512 (`T5_TOKENS`), as ChromaPipeline tokenizes."""
        return tokenize(tokenizers, captions, lambda i, tok: min(T5_TOKENS, tok.model_max_length))

    def prompt_inputs(self, pipe, prompt: str, negative: str, guidance: float) -> dict | None:
        """ChromaPipeline's embeddings and attention masks (the negative ones with classifier-free guidance)."""
        embeds, _, mask, neg, _, neg_mask = pipe.encode_prompt(
            prompt=prompt, negative_prompt=negative or None, device=pipe._execution_device,
            do_classifier_free_guidance=guidance > 1)
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask, "negative_prompt_embeds": neg,
                "negative_prompt_attention_mask": neg_mask}

    def encode_text(self, encoders: Sequence, tokenizers: Sequence, ids: Sequence, cached=None) -> dict:
        """As ChromaPipeline._get_t5_prompt_embeds: T5 run with the tokenizer's mask (the ids that are
        not padding), and the transformer's text mask keeping the real tokens and the first pad token.
        T5 comes from `cached["t5"]` once released."""
        import torch

        t5 = encoders[0] if encoders else None
        pad = getattr(tokenizers[0], "pad_token_id", None) if tokenizers else None
        tokens = ids[0]
        real = tokens != (0 if pad is None else pad)  # T5 pads at the end; the pad id is 0
        if cached is not None and "t5" in cached:
            states = cached["t5"]
        elif t5 is not None:
            states = t5(tokens.to(t5.device), attention_mask=real.to(t5.device), output_hidden_states=False)[0]
        else:
            raise ValueError("Chroma needs T5's hidden states: neither the encoder nor a cached copy is at hand")
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
        mask = (positions <= real.sum(dim=1, keepdim=True)).to(states.device, states.dtype)
        return {"hidden": states, "mask": mask, "t5": states}

    def extra_inputs(self, samples: Sequence) -> dict:
        return {}  # no guidance input: the approximator is fed guidance 0, as diffusers hard-wires it

    def predict(self, denoiser, noisy, t, cond: Mapping, extra: Mapping, dtype):
        """One transformer call on latents [B, C, H, W] → the velocity in the same shape, with
        ChromaPipeline's packing, ids and attention mask (text mask, then ones for the image tokens);
        the timestep goes in as σ (t / 1000) as the pipeline passes it."""
        import torch
        from diffusers import ChromaPipeline

        b, c, h, w = noisy.shape
        packed = ChromaPipeline._pack_latents(noisy.to(dtype), b, c, h, w)
        img_ids = ChromaPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, dtype)
        hidden = cond["hidden"].to(noisy.device, dtype)
        txt_ids = torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=dtype)
        mask = cond.get("mask")
        if mask is not None:
            mask = torch.cat([mask.to(noisy.device, dtype),
                              torch.ones(b, packed.shape[1], device=noisy.device, dtype=torch.bool)], dim=1)
        out = denoiser(hidden_states=packed, timestep=(t.float() / 1000).to(noisy.device), encoder_hidden_states=hidden,
                       txt_ids=txt_ids, img_ids=img_ids, attention_mask=mask, return_dict=False)[0]
        return unpack(out, h, w, c)


FAMILY = Chroma()
