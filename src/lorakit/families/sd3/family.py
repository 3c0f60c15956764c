"""SD 3.x (3.0 medium, 3.5 medium, 3.5 large): an MMDiT transformer trained by flow matching,
CLIP-L + CLIP-G + T5-XXL, 16-channel latents, kohya names in SAI's spelling with fused `attn.qkv`.

The pieces live where their kind lives: names and row maps in `naming.py`, the fused-layer targets
in `families/dit/targets.py`, file layouts in `layouts.py`, loading in `loading.py`, the
objective in `train/flow_matching.py`; this module says which of them SD3 uses.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from . import layouts
from ..base import Family
from ..dit.layouts import DitLoraFiles

_IMPL = "https://github.com/Stability-AI/generative-models"
VARIANTS = ("medium", "5-medium", "5-large")  # sd-scripts' ss_base_model_version values
T5_TOKENS = 77  # diffusers' train_dreambooth_lora_sd3.py default (--max_sequence_length)
_PRESET_KINDS = {"attn": {"attn"}, "attn-mlp": {"attn", "mlp"}, "transformer": {"attn", "mlp", "adaLN"},
                 "full": {"attn", "mlp", "adaLN", "embed"}}


_QK, _T5_QK = ("self_attn_q_proj", "self_attn_k_proj"), ("SelfAttention_q", "SelfAttention_k")


class SD3(DitLoraFiles, Family):
    lora_layouts = layouts  # its LoRA files (families/dit/layouts.py)
    name, label = "sd3", "SD3"
    pipeline_class = "StableDiffusion3Pipeline"
    denoiser, denoiser_class = "transformer", "SD3Transformer2DModel"
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizers = ("tokenizer", "tokenizer_2", "tokenizer_3")
    tokenizer_pads = ("<|endoftext|>", "!", None)  # the shipped CLIP BPE ones; T5's tokenizer cannot ship
    te_prefixes = ("lora_te1", "lora_te2", "lora_te3")
    prediction_types = ("flow_matching",)
    presets = ("transformer", "attn", "attn-mlp", "full")  # kohya's default (every block Linear) first
    bucket_step = 64
    checkpoint_implementation = "https://github.com/Stability-AI/sd3.5"
    lora_implementation = _IMPL
    frozen_text_encoders = ("text_encoder_3",)  # T5-XXL (4.7 B) is never trained here: cached, then released
    big_text_encoders = ("text_encoder_3",)  # T5-XXL: stored in --base-precision with the denoiser
    # a prompt's meaning comes mostly from the T5, which never trains here; a CLIP LoRA is opt-in
    trains_text_encoder_by_default = False
    frozen_outputs = ("t5",)
    classic_attention = False  # joint attention has no classic processor
    lora_formats = ("diffusers", "kohya", "comfyui", "onetrainer")  # diffusers first: diffusers and ComfyUI load it
    sample_steps, sample_guidance = 28, 5.0  # StableDiffusion3Pipeline's 28 steps; 3.5's model cards 4–5

    # --- detection -----------------------------------------------------------------------------
    def lora_metadata_evidence(self, metadata: Mapping[str, str]) -> int:
        if metadata.get("ss_base_model_version") in VARIANTS + ("sd3",):
            return 4
        return 4 if metadata.get("modelspec.architecture", "").startswith("stable-diffusion-3") else 0

    t5_te_prefixes = ("lora_te3",)
    lora_width_probes = (("lora_unet", ("attn_qkv",), frozenset({1536, 2432})),  # 3.x medium, 3.5 large
                         ("lora_te1", _QK, frozenset({768})), ("lora_te2", _QK, frozenset({1280})),
                         ("lora_te3", _T5_QK, frozenset({4096})))

    def is_denoiser_lora_name(self, name: str) -> bool:
        from . import naming

        return naming.is_sd3_kohya_name(name)

    def checkpoint_evidence(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        from .loading import is_sd3_checkpoint

        return 5 if is_sd3_checkpoint(shapes) else 0

    def pipeline_evidence(self, pipe, config: Mapping | None) -> int:
        if type(pipe).__name__ == self.pipeline_class:
            return 7
        cfg = dict(getattr(getattr(pipe, "transformer", None), "config", None) or config or {})
        return 6 if "joint_attention_dim" in cfg and "caption_projection_dim" in cfg else 0

    # --- metadata ------------------------------------------------------------------------------
    def base_model_version(self, v_prediction: bool) -> str:
        return "sd3"

    def architecture(self, v_prediction: bool) -> str:
        return "stable-diffusion-3"

    def resolution(self, v_prediction: bool) -> int:
        return 1024

    def model_lora_metadata(self, denoiser_config: Mapping) -> dict[str, str]:
        from .loading import variant_of_config

        return {"ss_base_model_version": variant_of_config(denoiser_config)}

    def lora_metadata(self, v_prediction: bool, previous: Mapping[str, str] | None = None) -> dict[str, str]:
        """sd-scripts' values: the variant as `ss_base_model_version` and appended to the architecture
        (`stable-diffusion-3-5-large/lora`) when known."""
        md = super().lora_metadata(v_prediction)
        variant = (previous or {}).get("ss_base_model_version")
        if variant in VARIANTS:
            md["ss_base_model_version"] = variant
            md["modelspec.architecture"] = f"stable-diffusion-3-{variant}/lora"
        return md

    # --- models and files ----------------------------------------------------------------------
    def config_dir(self, prediction_type: str, ckpt=None):
        from .loading import shipped_config, variant

        return shipped_config(variant(ckpt.shapes) if ckpt is not None else "5-medium")

    def pipeline_from_checkpoint(self, ckpt, config_dir, *, dtype, prediction_type: str, components,
                                 base_precision: str = "auto", **options):
        from .loading import build_pipeline

        return build_pipeline(ckpt, dtype=dtype, config_dir=config_dir, text_encoders=options.get("text_encoders"),
                              components=components, base_precision=base_precision,
                              big_text_encoders=self.big_text_encoders)

    def to_original(self, denoiser=None, denoiser_config=None, vae=None, vae_config=None,
                    text_encoders: list | None = None) -> dict:
        from .loading import original_state

        return original_state(denoiser, vae, vae_config, text_encoders)

    def denoiser_downsampling(self, config: Mapping) -> int:
        return int(config.get("patch_size", 2))  # latents are cut into patch×patch tokens

    def training_values(self, config: Mapping, latent_height: int, latent_width: int, checkpointed: bool) -> int:
        """Scales with the image tokens (patch × patch latent pixels each), the token width and the blocks."""
        from ...fit_check import mmdit_values

        patch = self.denoiser_downsampling(config)
        tokens = (latent_height // patch) * (latent_width // patch)
        width = config["num_attention_heads"] * config["attention_head_dim"]
        return mmdit_values(tokens, width, config["num_layers"], checkpointed)

    context_tokens = 77 + T5_TOKENS  # CLIP-L/G's 77 and T5's, one after the other

    def activation_units(self, config: Mapping, latent_height: int, latent_width: int) -> tuple[int, float, str]:
        """A block with SD 3.5-medium's second attention on the image tokens counts 1.5 blocks (measured:
        memory_plan.py)."""
        patch = self.denoiser_downsampling(config)
        tokens = (latent_height // patch) * (latent_width // patch) + self.context_tokens
        width = config["num_attention_heads"] * config["attention_head_dim"]
        dual = len([i for i in config.get("dual_attention_layers") or () if i < config["num_layers"]])
        return tokens * width, self.block_count(config) + 0.5 * dual, "dit"

    def block_count(self, config: Mapping) -> int:
        return config["num_layers"]

    # --- targets -------------------------------------------------------------------------------
    def denoiser_targets(self, denoiser) -> dict:
        from . import naming as sd3_naming
        from ..dit.targets import transformer_targets

        return transformer_targets(denoiser, sd3_naming)

    def denoiser_selected(self, path: str, container: str, preset: str) -> bool:
        return container.startswith("MMDiT.") and container[len("MMDiT."):] in _PRESET_KINDS.get(preset, ())

    # --- LoRA files ----------------------------------------------------------------------------
    # --- conditioning and the denoiser call ------------------------------------------------------
    def tokenize(self, tokenizers: Sequence, captions: Sequence[str]) -> list:
        """CLIP ids padded to 77; T5 ids to 77 (`T5_TOKENS`), as diffusers' SD3 training script does."""
        from ..dit.text import tokenize

        return tokenize(tokenizers, captions, lambda i, tok: T5_TOKENS if i == 2 else tok.model_max_length)

    def prompt_inputs(self, pipe, prompt: str, negative: str, guidance: float) -> dict | None:
        """StableDiffusion3Pipeline's four embeddings (the negative ones with classifier-free guidance)."""
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=pipe._execution_device,
            do_classifier_free_guidance=guidance > 1, negative_prompt=negative or None)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": neg, "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": neg_pooled}

    def encode_text(self, encoders: Sequence, tokenizers: Sequence, ids: Sequence, cached=None) -> dict:
        """As StableDiffusion3Pipeline.encode_prompt: [CLIP-L ⊕ CLIP-G penultimate states, zero-padded
        to T5's width ; T5's last state] and the two pooled projections side by side. T5 comes from
        `cached["t5"]` once released; without T5 at all, zeros (the pipeline does the same)."""
        import torch
        import torch.nn.functional as F

        clip_l, clip_g, t5 = (list(encoders) + [None, None, None])[:3]
        hidden, pooled = [], []
        for te, x in zip((clip_l, clip_g), ids):
            out = te(x.to(te.device), output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        clip = torch.cat(hidden, dim=-1)
        if cached is not None and "t5" in cached:
            t5_states = cached["t5"].to(clip.device, clip.dtype)
        elif t5 is not None and len(ids) > 2 and ids[2] is not None:
            t5_states = t5(ids[2].to(t5.device))[0].to(clip.dtype)
        else:
            width = getattr(getattr(t5, "config", None), "d_model", None) or clip.shape[-1]
            t5_states = torch.zeros(clip.shape[0], T5_TOKENS, width, dtype=clip.dtype, device=clip.device)
        clip = F.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
        return {"hidden": torch.cat([clip, t5_states], dim=-2), "pooled": torch.cat(pooled, dim=-1),
                "t5": t5_states}

    def predict(self, denoiser, noisy, t, cond: Mapping, extra: Mapping, dtype):
        return denoiser(hidden_states=noisy.to(dtype), timestep=t, encoder_hidden_states=cond["hidden"].to(dtype),
                        pooled_projections=cond["pooled"].to(dtype), return_dict=False)[0]


FAMILY = SD3()
