"""Qwen-Image (Qwen/Qwen-Image): a QwenImageTransformer2DModel (60 MMDiT blocks, 20 B), Qwen2.5-VL-7B
as its only text encoder, the Wan-style video VAE (AutoencoderKLQwenImage, latents normalized per
channel), flow matching with latents packed 2×2 as Flux's, no guidance input, real CFG at inference.

What differs from the other families lives here; the names are `naming.py` (one table: every tool
keeps diffusers' names), the LoRA files `layouts.py`, the single file `loading.py`. Prompt template,
packing and the shift come from `QwenImagePipeline` and musubi-tuner's `qwen_image_utils`:

- the prompt goes through Qwen's chat template and the LM's last hidden state is taken without
  the template's first 34 tokens (`prompt_template_encode_start_idx`), masked after the caption;
- timesteps: musubi-tuner's `qwen_shift` sampling, the resolution-dependent shift the pipeline
  infers with (`calculate_shift` on the packed length with the scheduler's 256/8192, 0.5/0.9);
- the text encoder (7 B) is cached and released, never adapted: no kohya text-encoder prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from . import layouts
from . import naming as qwen_naming
from ..base import CONFIGS_DIR, Family
from ..dit.layouts import DitLoraFiles
from ..dit.targets import transformer_targets

_IMPL = "https://github.com/QwenLM/Qwen-Image"
# QwenImagePipeline's chat template and the tokens of it dropped from the LM's output
TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n")
DROP = 34
# caption tokens kept (the pipeline allows 1024; the text cache needs one fixed length, and a caption
# over 512 tokens is rare): padded to this, the padding masked
CAPTION_TOKENS = 512


class QwenImage(DitLoraFiles, Family):
    lora_layouts = layouts
    name, label = "qwenimage", "Qwen-Image"
    card_colour = (97, 92, 237)
    pipeline_class = "QwenImagePipeline"
    denoiser, denoiser_class = "transformer", "QwenImageTransformer2DModel"
    text_encoders, tokenizers = ("text_encoder",), ("tokenizer",)
    tokenizer_pads = (None,)  # Qwen's BPE tokenizer is not shipped here
    te_prefixes = ()  # Qwen2.5-VL never gets a LoRA (musubi-tuner trains none either)
    prediction_types = ("flow_matching",)
    presets = ("transformer", "attn", "attn-mlp", "full")  # musubi-tuner's default first: every block Linear
    bucket_step = 64
    checkpoint_implementation = lora_implementation = _IMPL
    frozen_text_encoders = ("text_encoder",)
    big_text_encoders = ("text_encoder",)  # 7 B: stored in --base-precision with the denoiser
    trains_text_encoder_by_default = False
    frozen_outputs = ("qwen",)
    classic_attention = False
    lora_formats = ("kohya", "diffusers", "comfyui", "onetrainer")
    denoiser_containers = frozenset({"MMDiT.attn", "MMDiT.mlp", "MMDiT.adaLN", "MMDiT.embed"})
    _PRESET_GROUPS = {"attn": {"attn"}, "cross-attn": {"attn"}, "attn-mlp": {"attn", "mlp"},
                      "transformer": {"attn", "mlp", "adaLN"}, "full": {"attn", "mlp", "adaLN", "embed"}}
    # the text projection reads Qwen2.5-VL-7B's width; the image one 16 channels packed 2×2
    lora_width_probes = (("lora_unet", ("txt_in",), frozenset({3584})),
                         ("lora_unet", ("img_in",), frozenset({64})))
    context_tokens = CAPTION_TOKENS

    # --- parts: one text encoder, no kohya prefix for it ----------------------------------------
    def te_part_of_attribute(self, attribute: str) -> str | None:
        return None  # the text encoder is no LoRA part

    # --- metadata -------------------------------------------------------------------------------
    def base_model_version(self, v_prediction: bool = False) -> str:
        return "qwen_image"  # musubi-tuner's ARCHITECTURE_QWEN_IMAGE

    def architecture(self, v_prediction: bool = False) -> str:
        return "qwen-image"

    def resolution(self, v_prediction: bool = False) -> int:
        return 1328  # the 1:1 size of Qwen-Image's aspect table (the pipeline's default is 1024)

    def lora_metadata_evidence(self, metadata: Mapping[str, str]) -> int:
        return 9 if "qwen_image" == metadata.get("ss_base_model_version", "") or \
            metadata.get("modelspec.architecture", "").split("/")[0] in ("qwen-image", "qwen_image") else 0

    # --- detection ------------------------------------------------------------------------------
    def is_denoiser_lora_name(self, name: str) -> bool:
        return qwen_naming.is_kohya_name(name)

    def checkpoint_evidence(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        """The text RMSNorm and a block's image modulation, with or without `model.diffusion_model.`."""
        keys = set(qwen_naming.strip_prefix(dict.fromkeys(shapes)))
        return 9 if {"txt_norm.weight", "transformer_blocks.0.img_mod.1.weight"} <= keys else 0

    def pipeline_evidence(self, pipe, denoiser_config: Mapping | None) -> int:
        if type(pipe).__name__ == self.pipeline_class:
            return 9
        return 8 if type(getattr(pipe, "transformer", None)).__name__ == self.denoiser_class else 0

    # --- files ----------------------------------------------------------------------------------
    def config_dir(self, prediction_type: str = "flow_matching", ckpt=None) -> Path:
        return CONFIGS_DIR / "qwen-image"

    def pipeline_from_checkpoint(self, ckpt, config_dir, *, dtype, prediction_type: str, components,
                                 base_precision: str = "auto", **options):
        from .loading import build_pipeline

        return build_pipeline(ckpt, Path(config_dir), dtype=dtype, text_encoders=options.get("text_encoders"),
                              components=components, base_precision=base_precision,
                              big_text_encoders=self.big_text_encoders)

    def to_original(self, denoiser=None, denoiser_config=None, vae=None, vae_config=None,
                    text_encoders: list | None = None) -> dict:
        """The transformer as Qwen and Comfy-Org ship it: diffusers' own names."""
        return dict(denoiser)

    # --- names and presets ----------------------------------------------------------------------
    def denoiser_targets(self, transformer):
        return transformer_targets(transformer, qwen_naming)

    def denoiser_selected(self, path: str, container: str, preset: str) -> bool:
        return container.startswith("MMDiT.") and container[len("MMDiT."):] in self._PRESET_GROUPS[preset]

    def denoiser_downsampling(self, config: Mapping) -> int:
        return 2  # latents are packed 2×2 into one token

    def training_values(self, config: Mapping, latent_height: int, latent_width: int, checkpointed: bool) -> int:
        from ...fit_check import mmdit_values

        tokens = (latent_height // 2) * (latent_width // 2)
        width = config["num_attention_heads"] * config["attention_head_dim"]
        return mmdit_values(tokens, width, config["num_layers"], checkpointed)

    def activation_units(self, config: Mapping, latent_height: int, latent_width: int) -> tuple[int, float, str]:
        tokens = (latent_height // 2) * (latent_width // 2) + self.context_tokens
        return tokens * config["num_attention_heads"] * config["attention_head_dim"], self.block_count(config), "dit"

    def block_count(self, config: Mapping) -> int:
        return config["num_layers"]

    # --- the VAE: a video VAE, latents normalized per channel ----------------------------------
    def vae_geometry(self, vae_config: Mapping) -> tuple[int, int]:
        """QwenImagePipeline's vae_scale_factor (one halving per level after the first), and the first
        level's width."""
        return 2 ** len(vae_config["temperal_downsample"]), vae_config["base_dim"] * vae_config["dim_mult"][0]

    def encode_latents(self, vae, pixels):
        """As musubi-tuner and diffusers' trainer: the posterior's mean of one frame, (z − mean) / std per
        channel; [B, 16, h, w] (the frame axis dropped)."""
        import torch

        with torch.no_grad():
            z = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype).unsqueeze(2)).latent_dist.mean
            mean, std = _stats(vae, z)
            return ((z - mean) / std)[:, :, 0].float()

    def decode_latents(self, vae, latents):
        """`encode_latents` undone, then the VAE's decode of the one frame ([B, 3, H, W] in [-1, 1])."""
        z = latents.unsqueeze(2).to(vae.dtype)
        mean, std = _stats(vae, z)
        return vae.decode(z * std + mean, return_dict=False)[0][:, :, 0]

    # --- objective --------------------------------------------------------------------------------
    def timestep_shift(self, scheduler_config: Mapping, height: int, width: int) -> float:
        """musubi-tuner's `qwen_shift`: the shift QwenImagePipeline infers with, on the packed length."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

        return calculate_shift((height // 2) * (width // 2), scheduler_config.get("base_image_seq_len", 256),
                               scheduler_config.get("max_image_seq_len", 8192),
                               scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 0.9))

    # --- conditioning and the denoiser call --------------------------------------------------------
    def tokenize(self, tokenizers: Sequence, captions: Sequence[str]) -> list:
        """The captions in Qwen's chat template, padded to the template plus `CAPTION_TOKENS`."""
        tok = tokenizers[0]
        return [tok([TEMPLATE.format(c) for c in captions], padding="max_length", max_length=DROP + CAPTION_TOKENS,
                    truncation=True, return_tensors="pt").input_ids]

    def encode_text(self, encoders: Sequence, tokenizers: Sequence, ids: Sequence, cached=None) -> dict:
        """As QwenImagePipeline._get_qwen_prompt_embeds: the LM run with the padding masked, its last
        hidden state without the template's first 34 tokens, zero after the caption, and the mask.
        The LM's output comes from `cached["qwen"]` once released."""
        import torch

        tokens = ids[0]
        pad = getattr(tokenizers[0], "pad_token_id", None) if tokenizers else None
        real = tokens != pad if pad is not None else torch.ones_like(tokens, dtype=torch.bool)
        mask = real[:, DROP:]
        if cached is not None and "qwen" in cached:
            states = cached["qwen"]
        elif encoders and encoders[0] is not None:
            lm = encoders[0]
            out = lm(input_ids=tokens.to(lm.device), attention_mask=real.long().to(lm.device), output_hidden_states=True)
            states = out.hidden_states[-1][:, DROP:]
            states = states * mask.to(states.device, states.dtype)[..., None]
        else:
            raise ValueError("Qwen-Image needs Qwen2.5-VL's hidden states: neither the encoder nor a cached copy "
                             "is at hand")
        return {"hidden": states, "mask": mask.to(states.device, states.dtype), "qwen": states}

    def prompt_inputs(self, pipe, prompt: str, negative: str, guidance: float) -> dict | None:
        """QwenImagePipeline's embeddings and masks; the negative ones with real CFG (`true_cfg_scale`)."""
        embeds, mask = pipe.encode_prompt(prompt=prompt, device=pipe._execution_device)
        out = {"prompt_embeds": embeds, "prompt_embeds_mask": mask}
        if guidance > 1:
            neg, neg_mask = pipe.encode_prompt(prompt=negative or " ", device=pipe._execution_device)
            out.update(negative_prompt_embeds=neg, negative_prompt_embeds_mask=neg_mask, true_cfg_scale=guidance)
        return out

    def unpack_pipeline_latents(self, pipe, latents, height: int, width: int):
        """Packed tokens → [B, 16, h, w], the layout `decode_latents` takes."""
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)[:, :, 0]

    def extra_inputs(self, samples: Sequence) -> dict:
        return {}  # not guidance-distilled

    def predict(self, denoiser, noisy, t, cond: Mapping, extra: Mapping, dtype):
        """One transformer call on latents [B, C, H, W] → the velocity in the same shape, packed as
        QwenImagePipeline packs them; the text trimmed to the batch's longest caption (the rest is
        padding the mask hides), the timestep as σ (t / 1000)."""
        from diffusers import QwenImagePipeline

        b, c, h, w = noisy.shape
        packed = QwenImagePipeline._pack_latents(noisy.to(dtype), b, c, h, w)
        hidden = cond["hidden"].to(noisy.device, dtype)
        mask = cond.get("mask")
        if mask is not None:
            keep = int(mask.bool().any(dim=0).nonzero().max()) + 1 if mask.bool().any() else 1
            hidden, mask = hidden[:, :keep], mask[:, :keep].to(noisy.device)
            mask = None if bool(mask.bool().all()) else mask
        out = denoiser(hidden_states=packed, timestep=(t.float() / 1000).to(noisy.device, dtype),
                       encoder_hidden_states=hidden, encoder_hidden_states_mask=mask,
                       img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
        return QwenImagePipeline._unpack_latents(out, h * 8, w * 8, 8)[:, :, 0]


def _stats(vae, z):
    import torch

    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(z.device, z.dtype)
    std = torch.tensor(vae.config.latents_std).view(shape).to(z.device, z.dtype)
    return mean, std


FAMILY = QwenImage()
