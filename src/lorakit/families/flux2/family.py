"""Flux.2: one `Flux2Transformer2DModel` (double-stream then parallel single-stream blocks, shared
modulation, SwiGLU MLPs), `AutoencoderKLFlux2` (32 latent channels, patchified 2×2 to 128 and
normalized by the VAE's batch-norm statistics), and a language model's hidden states as text:

- klein (4 B, 9 B; diffusers `Flux2KleinPipeline`): Qwen3 (4 B / 8 B), layers 9, 18, 27 stacked;
  no guidance embedding (the distilled klein and the base share the weights' shape).
- dev (32 B; `Flux2Pipeline`): Mistral Small 3.1, layers 10, 20, 30, a guidance embedding.

The variant is read from the transformer config (`variant_of_config`) or the single file's widths.
Training follows musubi-tuner's `flux_2_train_network.py`: latents as the pipeline normalizes them,
σ drawn with `flux2_shift` (Flux.1's resolution shift on the packed token count: the latents are
already patchified), and on dev a guidance input of 1.0. The text encoder is cached and released;
musubi-tuner's LoRA never adapts it, and here it has no LoRA names at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from . import layouts as flux2_layouts
from . import naming as flux2_naming
from ..base import CONFIGS_DIR, Family
from ..flux.family import Flux

_IMPL = "https://github.com/black-forest-labs/flux2"  # musubi-tuner's sai_model_spec.IMPL_FLUX_2
TEXT_TOKENS = 512  # both pipelines' max_sequence_length, musubi-tuner's MAX_LENGTH
TRAIN_GUIDANCE = 1.0  # musubi-tuner: "use 1.0 as guidance scale for FLUX.2 non-base training"
# the LM hidden states each pipeline stacks (diffusers' `text_encoder_out_layers`), by the encoder's model type
HIDDEN_LAYERS = {"qwen3": (9, 18, 27), "mistral3": (10, 20, 30)}
# variant → (shipped config folder, musubi-tuner's modelspec.architecture, hidden width)
VARIANTS = {"klein-4b": ("flux2-klein-4b", "Flux.2-klein-4b", 3072),
            "klein-9b": ("flux2-klein-9b", "Flux.2-klein-9b", 4096),
            "dev": ("flux2-dev", "Flux.2-dev", 6144)}
_MARKER = "single_stream_modulation.lin.weight"  # diffusers' CHECKPOINT_KEY_NAMES["flux2"]


class Flux2(Flux):
    lora_layouts = flux2_layouts
    name, label = "flux2", "Flux.2"
    pipeline_class = "Flux2KleinPipeline"
    other_pipeline_classes = ("Flux2Pipeline",)
    denoiser_class = "Flux2Transformer2DModel"
    text_encoders, tokenizers = ("text_encoder",), ("tokenizer",)
    tokenizer_pads = (None,)
    te_prefixes = t5_te_prefixes = ()  # the LM never gets a LoRA (musubi-tuner's network has none)
    frozen_text_encoders = big_text_encoders = ("text_encoder",)
    frozen_outputs = ("llm",)
    trains_text_encoder_by_default = False
    checkpoint_implementation = lora_implementation = _IMPL
    lora_formats = ("kohya", "diffusers", "comfyui")
    lora_width_probes = (("lora_unet", ("img_attn_qkv", "txt_attn_qkv", "linear1"),
                          frozenset(w for _, _, w in VARIANTS.values())),)
    context_tokens = TEXT_TOKENS

    # --- variants and metadata ------------------------------------------------------------------
    def variant_of_config(self, config: Mapping) -> str:
        """dev has the guidance embedding; klein 4 B and 9 B differ in width (24 / 32 heads of 128)."""
        if config.get("guidance_embeds", True):
            return "dev"
        width = config.get("num_attention_heads", 0) * config.get("attention_head_dim", 0)
        return "klein-9b" if width == VARIANTS["klein-9b"][2] else "klein-4b"

    def variant_of_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> str:
        keys = {k[len(flux2_naming.BFL):] if k.startswith(flux2_naming.BFL) else k: s for k, s in shapes.items()}
        if any(k.startswith("guidance_in.") for k in keys):
            return "dev"
        width = keys.get("img_in.weight", (0,))[0]
        return "klein-9b" if width == VARIANTS["klein-9b"][2] else "klein-4b"

    def base_model_version(self, v_prediction: bool = False) -> str:
        return "flux2"

    def architecture(self, v_prediction: bool = False, variant: str | None = None) -> str:
        """musubi-tuner's modelspec.architecture (`Flux.2-klein-4b`...), `Flux.2` when the variant is unknown."""
        return VARIANTS[variant][1] if variant in VARIANTS else "Flux.2"

    def lora_metadata(self, v_prediction: bool, previous: Mapping[str, str] | None = None) -> dict[str, str]:
        md = Family.lora_metadata(self, v_prediction)
        known = (previous or {}).get("modelspec.architecture", "")
        if known.startswith("Flux.2-"):
            md["modelspec.architecture"] = known if known.endswith("/lora") else known + "/lora"
        return md

    def lora_metadata_evidence(self, metadata: Mapping[str, str]) -> int:
        """Above Flux.1's 9, whose test (`flux…`) our `flux2` also passes."""
        named = (metadata.get("ss_base_model_version", "") == "flux2"
                 or metadata.get("modelspec.architecture", "").startswith("Flux.2"))
        return 10 if named else 0

    # --- detection ------------------------------------------------------------------------------
    def is_denoiser_lora_name(self, name: str) -> bool:
        return flux2_naming.is_kohya_name(name)

    def checkpoint_evidence(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        """Above Flux.1's 8 (the file has BFL's `double_blocks` too): the shared single-stream modulation."""
        return 10 if any(k in shapes for k in (_MARKER, flux2_naming.BFL + _MARKER)) else 0

    def pipeline_evidence(self, pipe, denoiser_config: Mapping | None) -> int:
        if type(pipe).__name__ in (self.pipeline_class, *self.other_pipeline_classes):
            return 9
        return 8 if type(getattr(pipe, "transformer", None)).__name__ == self.denoiser_class else 0

    # --- files ----------------------------------------------------------------------------------
    def config_dir(self, prediction_type: str = "flow_matching", ckpt=None, variant: str | None = None) -> Path:
        if variant is None:
            variant = self.variant_of_shapes(ckpt.shapes) if ckpt is not None else "klein-4b"
        return CONFIGS_DIR / VARIANTS[variant][0]

    def pipeline_from_checkpoint(self, ckpt, config_dir, *, dtype, prediction_type: str, components,
                                 base_precision: str = "auto", **options):
        from .loading import build_pipeline

        return build_pipeline(ckpt, self, Path(config_dir), dtype=dtype, text_encoders=options.get("text_encoders"),
                              components=components, base_precision=base_precision)

    def to_original(self, denoiser=None, denoiser_config=None, vae=None, vae_config=None,
                    text_encoders: list | None = None) -> dict:
        """The transformer as BFL ships it (the VAE and the LM are separate files)."""
        return flux2_naming.diffusers_state_to_bfl(denoiser)

    def denoiser_targets(self, transformer):
        from ..dit.targets import transformer_targets

        return transformer_targets(transformer, flux2_naming)

    def denoiser_downsampling(self, config: Mapping) -> int:
        return 2  # the VAE's latents are patchified 2×2 into one token

    # --- latents ----------------------------------------------------------------------------------
    def encode_latents(self, vae, pixels):
        """As the pipelines' `_encode_vae_image`: the posterior's mean, patchified 2×2 (128 channels at
        1/16 of the pixels) and normalized by the VAE's batch-norm running statistics."""
        import torch
        from diffusers import Flux2KleinPipeline

        with torch.no_grad():
            mean = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
            lat = Flux2KleinPipeline._patchify_latents(mean).float()
            bn_mean = vae.bn.running_mean.view(1, -1, 1, 1).to(lat.device, lat.dtype)
            bn_std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(lat.device, lat.dtype)
            return (lat - bn_mean) / bn_std

    def timestep_shift(self, scheduler_config: Mapping, height: int, width: int) -> float:
        """musubi-tuner's `flux2_shift`: μ from the token count (the latents come patchified, one token
        each), linear from 256 tokens (0.5) to 4096 (1.15), as FluxPipeline's `calculate_shift`."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        return calculate_shift(height * width, scheduler_config.get("base_image_seq_len", 256),
                               scheduler_config.get("max_image_seq_len", 4096),
                               scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15))

    def training_values(self, config: Mapping, latent_height: int, latent_width: int, checkpointed: bool) -> int:
        from ...fit_check import mmdit_values

        tokens = (latent_height // 2) * (latent_width // 2)
        width = config["num_attention_heads"] * config["attention_head_dim"]
        return mmdit_values(tokens, width, config["num_layers"] + config["num_single_layers"], checkpointed)

    # --- text -------------------------------------------------------------------------------------
    def tokenize(self, tokenizers: Sequence, captions: Sequence[str]) -> list:
        """The ids each pipeline feeds its LM: klein's Qwen3 chat template (user turn, generation prompt,
        thinking off), dev's Mistral processor with the system message; padded to 512."""
        tok = tokenizers[0]
        if hasattr(tok, "tokenizer"):  # dev: a processor (Mistral's Pixtral processor)
            from diffusers.pipelines.flux2.pipeline_flux2 import SYSTEM_MESSAGE, format_input

            return [tok.apply_chat_template(format_input(list(captions), SYSTEM_MESSAGE), add_generation_prompt=False,
                                            tokenize=True, return_dict=True, return_tensors="pt", padding="max_length",
                                            truncation=True, max_length=TEXT_TOKENS)["input_ids"]]
        texts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False) for c in captions]
        return [tok(texts, padding="max_length", truncation=True, max_length=TEXT_TOKENS,
                    return_tensors="pt").input_ids]

    def encode_text(self, encoders: Sequence, tokenizers: Sequence, ids: Sequence, cached=None) -> dict:
        """The LM's hidden states at the pipeline's three layers, stacked along the width ([B, 512, 3·D]),
        run with the tokenizer's mask; the LM's output comes from `cached["llm"]` once released."""
        import torch

        if cached is not None and "llm" in cached:
            return {"hidden": cached["llm"], "llm": cached["llm"]}
        lm = encoders[0] if encoders else None
        if lm is None:
            raise ValueError("Flux.2 needs its text encoder's hidden states: neither the encoder nor a cached copy "
                             "is at hand")
        tok = tokenizers[0]
        tok = getattr(tok, "tokenizer", tok)
        tokens = ids[0].to(lm.device)
        mask = (tokens != tok.pad_token_id).long()
        out = lm(input_ids=tokens, attention_mask=mask, output_hidden_states=True, use_cache=False)
        layers = HIDDEN_LAYERS[lm.config.model_type]
        states = torch.stack([out.hidden_states[k] for k in layers], dim=1)
        b, n, s, d = states.shape
        states = states.permute(0, 2, 1, 3).reshape(b, s, n * d)
        return {"hidden": states, "llm": states}

    def prompt_inputs(self, pipe, prompt: str, negative: str, guidance: float) -> dict | None:
        """The pipeline's own embeddings; klein's base takes true CFG with an empty negative prompt (its
        pipeline encodes "" whatever is asked), dev's guidance is distilled (no negative)."""
        import inspect

        embeds, _ = pipe.encode_prompt(prompt=prompt, device=pipe._execution_device)
        inputs = {"prompt_embeds": embeds}
        takes_negative = "negative_prompt_embeds" in inspect.signature(pipe.__call__).parameters
        if takes_negative and guidance > 1 and not pipe.config.get("is_distilled", False):
            inputs["negative_prompt_embeds"] = pipe.encode_prompt(prompt="", device=pipe._execution_device)[0]
        return inputs

    def unpack_pipeline_latents(self, pipe, latents, height: int, width: int):
        return latents  # the pipelines return the VAE's own latents (de-normalized, unpatchified)

    # --- the denoiser call --------------------------------------------------------------------------
    def extra_inputs(self, samples: Sequence) -> dict:
        import torch

        return {"guidance": torch.full((len(samples),), TRAIN_GUIDANCE)}

    def predict(self, denoiser, noisy, t, cond: Mapping, extra: Mapping, dtype):
        """One transformer call on patchified latents [B, 128, h, w] → the velocity in the same shape,
        with the pipelines' packing and 4-axis position ids; σ = t / 1000 as they pass it, and dev's
        guidance embedding fed `extra["guidance"]`."""
        import torch
        from diffusers import Flux2KleinPipeline as P

        b, c, h, w = noisy.shape
        packed = P._pack_latents(noisy.to(dtype))
        img_ids = P._prepare_latent_ids(noisy).to(noisy.device)
        hidden = cond["hidden"].to(noisy.device, dtype)
        txt_ids = P._prepare_text_ids(hidden).to(noisy.device)
        g = None
        if denoiser.config.guidance_embeds:
            g = extra.get("guidance")
            g = torch.full((b,), TRAIN_GUIDANCE) if g is None else g
            g = g.to(noisy.device, torch.float32)
        out = denoiser(hidden_states=packed, timestep=(t.float() / 1000).to(noisy.device), guidance=g,
                       encoder_hidden_states=hidden, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return out.permute(0, 2, 1).reshape(b, c, h, w)


FAMILY = Flux2()
