"""Z-Image (Tongyi-MAI; Turbo and the base model): a 6 B single-stream DiT (`ZImageTransformer2DModel`:
2 noise-refiner and 2 context-refiner blocks, then 30 joint blocks over image and text tokens),
Qwen3-4B as the text encoder, Flux's 16-channel VAE, latents patchified 2×2 inside the transformer.

What differs from the other DiT families, as `ZImagePipeline` and musubi-tuner's
`zimage_train_network.py` do it:

- The prompt goes through Qwen3's chat template; the conditioning is the second-to-last hidden state
  of the real (unpadded) tokens only, one sequence per caption (each may have its own length).
- The transformer takes the timestep as 1 − σ and predicts x₀ − ε, the opposite of the velocity the
  flow-matching loss compares with: `predict` hands back its negation, as the pipeline does before
  each scheduler step and as musubi-tuner's target `latents − noise` does on its side.
- σ is sampled on the scheduler's static shift (3.0, musubi-tuner's `--discrete_flow_shift` default
  for Z-Image), no resolution-dependent shift; no guidance input (the base model uses real CFG,
  Turbo none).
- The LoRA (musubi-tuner's `networks/lora_zimage.py`) adapts the attention and MLP Linears of the 30
  joint blocks; refiners and adaLN only with the `full` preset. Qwen3 never gets one: it is encoded
  once, cached and released.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from . import layouts as zi_layouts
from . import naming as zi
from ...errors import LoraKitError
from ..base import CONFIGS_DIR, Family

_IMPL = "https://github.com/Tongyi-MAI/Z-Image"  # musubi-tuner's sai_model_spec.IMPL_Z_IMAGE
TOKENS = 512  # ZImagePipeline's max_sequence_length (musubi-tuner's DEFAULT_MAX_SEQUENCE_LENGTH)
BLOCK = "ZImageTransformerBlock"


class ZImage(Family):
    name, label = "zimage", "Z-Image"
    card_colour = (190, 120, 60)
    pipeline_class = "ZImagePipeline"
    denoiser, denoiser_class = "transformer", "ZImageTransformer2DModel"
    text_encoders, tokenizers = ("text_encoder",), ("tokenizer",)
    tokenizer_pads = (None,)  # Qwen's tokenizer (151 k tokens) does not ship
    te_prefixes = ("lora_te",)  # a name for Qwen3's part; it never gets a LoRA (frozen_text_encoders)
    prediction_types = ("flow_matching",)
    presets = ("transformer", "attn", "full")  # musubi-tuner's default first
    bucket_step = 64  # multiples of 16 px are needed (VAE 8 × patch 2)
    checkpoint_implementation = lora_implementation = _IMPL
    frozen_text_encoders = ("text_encoder",)
    big_text_encoders = ("text_encoder",)  # Qwen3-4B: stored in --base-precision with the transformer
    trains_text_encoder_by_default = False
    frozen_outputs = ("qwen",)
    classic_attention = False  # its own attention processor (rotary, qk norm)
    lora_formats = zi_layouts.LAYOUTS
    denoiser_containers = frozenset({BLOCK})
    context_tokens = TOKENS
    lora_width_probes = (("lora_unet", ("attention_to_q", "attention_to_k"), frozenset({3840})),)

    # --- metadata -------------------------------------------------------------------------------
    def base_model_version(self, v_prediction: bool = False) -> str:
        return "z_image"  # musubi-tuner's ARCHITECTURE_Z_IMAGE_FULL

    def architecture(self, v_prediction: bool = False) -> str:
        return "Z-Image"  # musubi-tuner's sai_model_spec.ARCH_Z_IMAGE

    def resolution(self, v_prediction: bool = False) -> int:
        return 1024

    def lora_metadata_evidence(self, metadata: Mapping[str, str]) -> int:
        return 9 if metadata.get("ss_base_model_version") == "z_image" or \
            metadata.get("modelspec.architecture", "").split("/")[0] == "Z-Image" else 0

    # --- detection ------------------------------------------------------------------------------
    def has_lora_module(self, name: str) -> bool:
        return zi.is_kohya_name(name)  # no text-encoder module: Qwen3 takes no LoRA

    def is_denoiser_lora_name(self, name: str) -> bool:
        return zi.is_kohya_name(name)

    def checkpoint_evidence(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        """diffusers' marker (`layers.0.adaLN_modulation.0.weight`) with the caption embedder and the
        refiners, which no other family here has."""
        has = lambda key: key in shapes or zi.BFL + key in shapes  # noqa: E731
        return 9 if has("layers.0.adaLN_modulation.0.weight") and has("cap_embedder.1.weight") else 0

    def pipeline_evidence(self, pipe, denoiser_config: Mapping | None) -> int:
        if type(pipe).__name__ == self.pipeline_class:
            return 9
        return 8 if type(getattr(pipe, "transformer", None)).__name__ == self.denoiser_class else 0

    # --- files ----------------------------------------------------------------------------------
    def config_dir(self, prediction_type: str = "flow_matching", ckpt=None) -> Path:
        return CONFIGS_DIR / "zimage"

    def pipeline_from_checkpoint(self, ckpt, config_dir, *, dtype, prediction_type: str, components,
                                 base_precision: str = "auto", **options):
        from .loading import build_pipeline

        return build_pipeline(ckpt, Path(config_dir), dtype=dtype, text_encoders=options.get("text_encoders"),
                              components=components, base_precision=base_precision,
                              big_text_encoders=self.big_text_encoders)

    def to_original(self, denoiser=None, denoiser_config=None, vae=None, vae_config=None,
                    text_encoders: list | None = None) -> dict:
        """The transformer as the single file holds it (the VAE and Qwen3 are separate files)."""
        return zi.diffusers_state_to_original(denoiser)

    # --- LoRA files (`layouts.py`) -----------------------------------------------------------------
    def read_lora(self, state: Mapping, metadata: Mapping[str, str], layout: str, source: str | None) -> dict:
        return zi_layouts.read(state, metadata, layout, source)

    def check_lora_names(self, modules: Mapping, source: str | None) -> None:
        zi_layouts.check_kohya_names(modules, source)

    def write_lora(self, modules: Mapping, layout: str, dtype, source: str | None):
        if layout == "kohya":
            zi_layouts.check_kohya_names(modules, source)
            return None
        return zi_layouts.write_state(modules, layout, dtype, source)

    def lora_layout_of(self, keys) -> str | None:
        return zi_layouts.layout_of(keys)

    def lora_reading(self, shapes: Mapping, layout: str) -> dict | None:
        return zi_layouts.reading(shapes, layout)

    # --- presets and sizes -------------------------------------------------------------------------
    def denoiser_selected(self, path: str, container: str, preset: str) -> bool:
        """transformer: musubi-tuner's layers (attention and MLP of the joint blocks); attn: their
        attention; full: every Linear (refiners, adaLN, embedders, final layer)."""
        if preset == "full":
            return True
        block = zi.block_of(path)
        if container != BLOCK or block is None or block[0] != "layers":
            return False
        return block[2].startswith("attention.") or (preset == "transformer" and block[2].startswith("feed_forward."))

    def denoiser_downsampling(self, config: Mapping) -> int:
        return 2  # 2×2 latent patches per token

    def training_values(self, config: Mapping, latent_height: int, latent_width: int, checkpointed: bool) -> int:
        from ...fit_check import mmdit_values

        tokens = (latent_height // 2) * (latent_width // 2)
        return mmdit_values(tokens, config["dim"], self.block_count(config), checkpointed)

    def activation_units(self, config: Mapping, latent_height: int, latent_width: int) -> tuple[int, float, str]:
        tokens = (latent_height // 2) * (latent_width // 2) + self.context_tokens
        return tokens * config["dim"], self.block_count(config), "dit"

    def block_count(self, config: Mapping) -> int:
        return config["n_layers"] + 2 * config.get("n_refiner_layers", 2)

    # --- conditioning and the denoiser call --------------------------------------------------------
    def timestep_shift(self, scheduler_config: Mapping, height: int, width: int) -> None:
        """None: the scheduler's own (static) shift, see the module docstring."""
        return None

    def tokenize(self, tokenizers: Sequence, captions: Sequence[str]) -> list:
        """Ids of each caption in Qwen3's chat template, padded to 512 (`TOKENS`), as ZImagePipeline._encode_prompt."""
        tok = tokenizers[0]
        texts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True,
                                         enable_thinking=True) for c in captions]
        return [tok(texts, padding="max_length", max_length=min(TOKENS, tok.model_max_length), truncation=True,
                    return_tensors="pt").input_ids]

    def encode_text(self, encoders: Sequence, tokenizers: Sequence, ids: Sequence, cached=None) -> dict:
        """Qwen3's second-to-last hidden state with the tokenizer's mask (the ids that are not padding),
        as ZImagePipeline._encode_prompt; `mask` says which tokens the transformer gets. Qwen3's
        states come from `cached["qwen"]` once it is released."""
        tokens = ids[0]
        pad = getattr(tokenizers[0], "pad_token_id", None) if tokenizers else None
        real = tokens != (-1 if pad is None else pad)
        qwen = encoders[0] if encoders else None
        if cached is not None and "qwen" in cached:
            states = cached["qwen"]
        elif qwen is not None:
            states = qwen(input_ids=tokens.to(qwen.device), attention_mask=real.to(qwen.device),
                          output_hidden_states=True).hidden_states[-2]
        else:
            raise ValueError("Z-Image needs Qwen3's hidden states: neither the encoder nor a cached copy is at hand")
        return {"hidden": states, "mask": real.to(states.device, states.dtype), "qwen": states}

    def prompt_inputs(self, pipe, prompt: str, negative: str, guidance: float) -> dict | None:
        """ZImagePipeline's embeddings (the negative ones when it runs CFG: guidance above 0)."""
        cfg = guidance > 0
        pos, neg = pipe.encode_prompt(prompt=prompt, negative_prompt=negative or None,
                                      device=pipe._execution_device, do_classifier_free_guidance=cfg)
        return {"prompt_embeds": pos, "negative_prompt_embeds": neg if cfg else None}

    def extra_inputs(self, samples: Sequence) -> dict:
        return {}

    def predict(self, denoiser, noisy, t, cond: Mapping, extra: Mapping, dtype):
        """One transformer call on latents [B, C, H, W] → the velocity ε − x₀ in the same shape: each
        sample its own image and its real caption tokens, the timestep as 1 − t/1000, the output
        negated (see the module docstring)."""
        import torch

        hidden = cond["hidden"].to(noisy.device, dtype)
        mask = cond.get("mask")
        keep = (mask > 0.5).to(noisy.device) if mask is not None else torch.ones(hidden.shape[:2], dtype=torch.bool,
                                                                                   device=noisy.device)
        images = [x.to(dtype).unsqueeze(1) for x in noisy]  # [C, 1, H, W]: one frame
        captions = [h[k] for h, k in zip(hidden, keep)]
        t_model = (1.0 - t.float() / 1000).to(noisy.device)
        out = denoiser(images, t_model, captions, return_dict=False)[0]
        return -torch.stack([o.squeeze(1) for o in out])

    def check_checkpoint(self, ckpt) -> None:
        if any(k.startswith(("control_", zi.BFL + "control_")) for k in ckpt.shapes):
            raise LoraKitError("a Z-Image ControlNet file, not the transformer", ckpt.path)


FAMILY = ZImage()
