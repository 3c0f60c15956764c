"""Flux.1 (dev, schnell): a FluxTransformer2DModel (19 double-stream + 38 single-stream blocks),
CLIP-L (pooled) + T5-XXL (sequence), flow matching with a resolution-dependent timestep shift,
latents packed 2×2 into tokens, and on dev a guidance embedding.

What differs from the other families lives here; the name tables are `naming.py`, the file
layouts `layouts.py`. Packing, position ids and the shift come from diffusers'
`FluxPipeline` and scheduler (`_pack_latents`, `_prepare_latent_image_ids`, `calculate_shift`,
`time_shift`), called rather than rewritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from . import naming as flux_naming
from . import layouts
from ..base import CONFIGS_DIR, Family
from ..dit.layouts import DitLoraFiles

BFL = "model.diffusion_model."
_IMPL = "https://github.com/black-forest-labs/flux"
# the guidance value the reference trainers feed dev's guidance embedding while training
# (--guidance_scale in diffusers' train_dreambooth_lora_flux.py and in sd-scripts: both 3.5)
TRAIN_GUIDANCE = 3.5
T5_TOKENS = 512  # diffusers' train_dreambooth_lora_flux.py --max_sequence_length (sd-scripts: 512 for dev)
SHIPPED = {"dev": "flux1-dev", "schnell": "flux1-schnell"}


class Flux(DitLoraFiles, Family):
    lora_layouts = layouts  # its LoRA files (families/dit/layouts.py)
    name, label = "flux", "Flux.1"
    pipeline_class = "FluxPipeline"
    denoiser, denoiser_class = "transformer", "FluxTransformer2DModel"
    text_encoders, tokenizers = ("text_encoder", "text_encoder_2"), ("tokenizer", "tokenizer_2")
    tokenizer_pads = ("<|endoftext|>", None)  # the shipped CLIP BPE one; T5's tokenizer cannot ship
    te_prefixes = ("lora_te1", "lora_te3")  # sd-scripts numbers T5 3 (as in SD3) "to be ComfyUI compatible"
    prediction_types = ("flow_matching",)
    presets = ("transformer", "attn", "attn-mlp", "full")  # kohya's default first: every Linear in the blocks
    bucket_step = 64  # multiples of 16 px are needed (VAE 8 × packing 2); 64 as for the others
    checkpoint_implementation = lora_implementation = _IMPL
    frozen_text_encoders = ("text_encoder_2",)  # T5-XXL (4.7 B) is never trained here: cached, then released
    big_text_encoders = ("text_encoder_2",)  # T5-XXL: stored in --base-precision with the denoiser
    # a prompt's meaning comes mostly from the T5, which never trains here; a CLIP LoRA is opt-in
    trains_text_encoder_by_default = False
    frozen_outputs = ("t5",)
    classic_attention = False  # joint attention has no classic processor
    sample_steps, sample_guidance = 28, 3.5  # FluxPipeline's defaults (dev: the guidance embedding's value)
    lora_formats = ("kohya", "diffusers", "comfyui", "onetrainer")  # kohya first: sd-scripts, ComfyUI and diffusers load it
    denoiser_containers = frozenset({"MMDiT.attn", "MMDiT.mlp", "MMDiT.adaLN", "MMDiT.embed"})
    _PRESET_GROUPS = {"attn": {"attn"}, "cross-attn": {"attn"}, "attn-mlp": {"attn", "mlp"},
                      "transformer": {"attn", "mlp", "adaLN"}, "full": {"attn", "mlp", "adaLN", "embed"}}

    # --- metadata -------------------------------------------------------------------------------
    def base_model_version(self, v_prediction: bool = False) -> str:
        return "flux1"  # sd-scripts' flux_utils.MODEL_VERSION_FLUX_V1

    def architecture(self, v_prediction: bool = False, variant: str | None = None) -> str:
        """sd-scripts' sai_model_spec: flux-1-dev, flux-1-schnell, or flux-1 when unknown."""
        return f"flux-1-{variant}" if variant in SHIPPED else "flux-1"

    def resolution(self, v_prediction: bool = False) -> int:
        return 1024

    def training_defaults(self, v_prediction: bool, denoiser_config: Mapping) -> dict:
        """schnell (no guidance embedding) samples in 4 steps, without guidance, as BFL runs it."""
        found = super().training_defaults(v_prediction, denoiser_config)
        if denoiser_config and self.variant_of_config(denoiser_config) == "schnell":
            found.update(sample_steps=4, sample_guidance=0.0)
        return found

    def variant_of_config(self, config: Mapping) -> str:
        """dev has the guidance embedding, schnell (timestep-distilled) does not."""
        return "dev" if config.get("guidance_embeds") else "schnell"

    def config_dir(self, prediction_type: str = "flow_matching", ckpt=None, variant: str | None = None) -> Path:
        if variant is None:
            from .loading import variant as variant_of_file

            variant = variant_of_file(ckpt.shapes) if ckpt is not None else "dev"
        return CONFIGS_DIR / SHIPPED[variant]

    def pipeline_from_checkpoint(self, ckpt, config_dir, *, dtype, prediction_type: str, components,
                                 base_precision: str = "auto", **options):
        from .loading import build_pipeline

        return build_pipeline(ckpt, self, dtype=dtype, config_dir=config_dir, text_encoders=options.get("text_encoders"),
                              components=components, base_precision=base_precision)

    def to_original(self, denoiser=None, denoiser_config=None, vae=None, vae_config=None,
                    text_encoders: list | None = None) -> dict:
        """The transformer in BFL's layout (what BFL ships: the VAE and text encoders are separate files)."""
        return flux_naming.diffusers_state_to_bfl(denoiser)

    def model_lora_metadata(self, denoiser_config: Mapping) -> dict[str, str]:
        return {"modelspec.architecture": self.architecture(variant=self.variant_of_config(denoiser_config)) + "/lora"}

    def lora_metadata(self, v_prediction: bool, previous: Mapping[str, str] | None = None) -> dict[str, str]:
        """sd-scripts' values: `flux1`, and `flux-1-dev/lora` or `flux-1-schnell/lora` when the variant is known."""
        md = super().lora_metadata(v_prediction)
        known = (previous or {}).get("modelspec.architecture", "")
        if known.startswith("flux-1-"):
            md["modelspec.architecture"] = known if known.endswith("/lora") else known + "/lora"
        return md

    # --- detection ------------------------------------------------------------------------------
    def lora_metadata_evidence(self, metadata: Mapping[str, str]) -> int:
        if metadata.get("ss_base_model_version", "").startswith("flux") or \
                metadata.get("modelspec.architecture", "").startswith("flux"):
            return 9
        return 0

    t5_te_prefixes = ("lora_te3",)
    lora_width_probes = (("lora_unet", ("img_attn_qkv", "txt_attn_qkv", "linear1"), frozenset({3072})),
                         ("lora_te1", ("self_attn_q_proj", "self_attn_k_proj"), frozenset({768})),
                         ("lora_te3", ("SelfAttention_q", "SelfAttention_k"), frozenset({4096})))

    def is_denoiser_lora_name(self, name: str) -> bool:
        return flux_naming.is_kohya_name(name)

    def checkpoint_evidence(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        return 8 if is_flux_checkpoint(shapes) else 0

    def pipeline_evidence(self, pipe, denoiser_config: Mapping | None) -> int:
        if type(pipe).__name__ == self.pipeline_class:
            return 9
        tr = getattr(pipe, "transformer", None)
        return 8 if type(tr).__name__ == self.denoiser_class else 0

    # --- names and presets ----------------------------------------------------------------------
    def denoiser_targets(self, transformer):
        from ..dit.targets import transformer_targets

        return transformer_targets(transformer, flux_naming)

    def denoiser_selected(self, path: str, container: str, preset: str) -> bool:
        return container.startswith("MMDiT.") and container[len("MMDiT."):] in self._PRESET_GROUPS[preset]

    def denoiser_downsampling(self, config: Mapping) -> int:
        return 2  # latents are packed 2×2 into one token

    def training_values(self, config: Mapping, latent_height: int, latent_width: int, checkpointed: bool) -> int:
        """Scales with the image tokens (2×2 latent pixels each), the token width and the double and
        single blocks."""
        from ...fit_check import mmdit_values

        tokens = (latent_height // 2) * (latent_width // 2)
        width = config["num_attention_heads"] * config["attention_head_dim"]
        return mmdit_values(tokens, width, config["num_layers"] + config["num_single_layers"], checkpointed)

    context_tokens = T5_TOKENS

    def activation_units(self, config: Mapping, latent_height: int, latent_width: int) -> tuple[int, float, str]:
        tokens = (latent_height // 2) * (latent_width // 2) + self.context_tokens
        width = config["num_attention_heads"] * config["attention_head_dim"]
        return tokens * width, self.block_count(config), "dit"

    def block_count(self, config: Mapping) -> int:
        return config["num_layers"] + config["num_single_layers"]

    # --- objective --------------------------------------------------------------------------------
    def timestep_shift(self, scheduler_config: Mapping, height: int, width: int) -> float:
        """The timestep shift for a latent of `height`×`width` (before packing): FluxPipeline's
        `calculate_shift` on the packed sequence length, as sd-scripts' `flux_shift` sampling does."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        seq = (height // 2) * (width // 2)
        return calculate_shift(seq, scheduler_config.get("base_image_seq_len", 256),
                               scheduler_config.get("max_image_seq_len", 4096),
                               scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15))

    # --- conditioning and the denoiser call --------------------------------------------------------
    def tokenize(self, tokenizers: Sequence, captions: Sequence[str]) -> list:
        """CLIP ids padded to 77, T5 ids to 512 (`T5_TOKENS`), as FluxPipeline.encode_prompt does."""
        from ..dit.text import tokenize

        return tokenize(tokenizers, captions, lambda i, tok: min(T5_TOKENS, tok.model_max_length) if i == 1 else tok.model_max_length)

    def prompt_inputs(self, pipe, prompt: str, negative: str, guidance: float) -> dict | None:
        """FluxPipeline's embeddings of the prompt (guidance is distilled into the model: the negative
        prompt only counts with true CFG, which generation does not use)."""
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=pipe._execution_device)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def unpack_pipeline_latents(self, pipe, latents, height: int, width: int):
        """FluxPipeline (and ChromaPipeline) return the latents packed in 2×2 patches."""
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)

    def encode_text(self, encoders: Sequence, tokenizers: Sequence, ids: Sequence, cached=None) -> dict:
        """As FluxPipeline.encode_prompt: the sequence is T5's last hidden state, the pooled vector
        CLIP-L's pooled output. T5 comes from `cached["t5"]` once released."""
        import torch

        clip, t5 = (list(encoders) + [None, None])[:2]
        pooled = clip(ids[0].to(clip.device), output_hidden_states=False).pooler_output
        if cached is not None and "t5" in cached:
            t5_states = cached["t5"].to(pooled.device, pooled.dtype)
        elif t5 is not None and len(ids) > 1 and ids[1] is not None:
            t5_states = t5(ids[1].to(t5.device), output_hidden_states=False)[0].to(pooled.dtype)
        else:
            raise ValueError("Flux needs T5's hidden states: neither the encoder nor a cached copy is at hand")
        return {"hidden": t5_states, "pooled": pooled, "t5": t5_states}

    def extra_inputs(self, samples: Sequence) -> dict:
        """`guidance`: what dev's guidance embedding is fed while training (`--guidance-scale`)."""
        import torch

        return {"guidance": torch.full((len(samples),), TRAIN_GUIDANCE)}

    def predict(self, denoiser, noisy, t, cond: Mapping, extra: Mapping, dtype):
        """One transformer call on latents [B, C, H, W] → the velocity in the same shape.

        Packing and position ids are FluxPipeline's; the timestep goes in as σ (t / 1000) as the
        pipeline and diffusers' trainer pass it; dev's guidance embedding gets `extra["guidance"]`
        (schnell has none and ignores it).
        """
        import torch
        from diffusers import FluxPipeline

        b, c, h, w = noisy.shape
        packed = FluxPipeline._pack_latents(noisy.to(dtype), b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, dtype)
        hidden = cond["hidden"].to(noisy.device, dtype)
        txt_ids = torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=dtype)
        g = None
        if getattr(denoiser.config, "guidance_embeds", False):
            g = extra.get("guidance")
            g = torch.full((b,), TRAIN_GUIDANCE) if g is None else g
            g = g.to(noisy.device, torch.float32)
        out = denoiser(hidden_states=packed, timestep=(t.float() / 1000).to(noisy.device), guidance=g,
                       pooled_projections=cond["pooled"].to(noisy.device, dtype), encoder_hidden_states=hidden,
                       txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return unpack(out, h, w, c)


def unpack(tokens, h: int, w: int, c: int):
    """Tokens [B, (h/2)(w/2), 4c] → latents [B, c, h, w]: FluxPipeline._unpack_latents takes pixel
    sizes and a VAE factor; with factor 8 and pixels 8h × 8w it is exactly this inverse of packing."""
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(tokens, h * 8, w * 8, 8)


def is_flux_checkpoint(keys) -> bool:
    return any(k.startswith((BFL + "double_blocks.", "double_blocks.")) for k in keys)


FAMILY = Flux()
