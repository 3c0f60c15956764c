"""The interface every model family answers: what differs between SD 1.x, 2.x, XL, SD 3.x and
Flux.1 is asked of a `Family`, never decided by comparing family names elsewhere.

A family is a stateless object: class attributes for the facts (component names, kohya prefixes,
metadata values), methods for what needs the weights at hand (detection, conditioning, the
denoiser call, the single-file layout). Diffusers and transformers are imported inside methods
only, so `lora/` and `formats/` may ask a family without importing them.

Detection methods return an evidence strength (0 = not this family); the registry takes the
families with the strongest evidence, so no family needs to know the others' markers. A LoRA's
evidence is graded the same way by every family (see `lora_evidence`), so that a tie means what it
says: the file fits each of those families equally well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "models" / "configs"
OBJECTIVES = ("epsilon", "v_prediction", "flow_matching")


class LayoutError(ValueError):
    """A tensor name the original layout has no place for."""


class Family:
    # --- identity ------------------------------------------------------------------------------
    name: str = ""  # registry key; what BaseModel.family, ModelParts.family and LoRAFile.family hold
    label: str = ""  # for messages: "SD1", "SDXL"
    card_colour: tuple[int, int, int] = (110, 110, 110)  # placeholder card colour in the UI library

    # --- diffusers pipeline and components ------------------------------------------------------
    pipeline_class: str = ""  # diffusers pipeline class (model_index.json `_class_name`)
    other_pipeline_classes: tuple[str, ...] = ()  # further pipeline classes of the same family's variants
    pipeline_kwargs: Mapping[str, Any] = {}  # extra from_pretrained/constructor kwargs (safety checker off)
    denoiser: str = "unet"  # pipeline attribute of the network the LoRA adapts: unet / transformer
    denoiser_class: str = ""  # its diffusers class
    text_encoders: tuple[str, ...] = ()  # pipeline attributes, in kohya order (lora_te1 is the first)
    tokenizers: tuple[str, ...] = ()  # pipeline attributes, one per text encoder
    tokenizer_pads: tuple[str | None, ...] = ()  # pad token of each shipped CLIP BPE tokenizer (None: none ships)

    # --- kohya names ----------------------------------------------------------------------------
    denoiser_prefix: str = "lora_unet"  # kohya prefix of the denoiser's modules (lora_unet for every family)
    te_prefixes: tuple[str, ...] = ()  # kohya prefix per text encoder: (lora_te,) or (lora_te1, lora_te2, ...)

    # --- training -------------------------------------------------------------------------------
    prediction_types: tuple[str, ...] = ("epsilon",)  # accepted --prediction-type values, default first
    presets: tuple[str, ...] = ("attn", "cross-attn", "transformer", "full")  # target presets, kohya's first
    bucket_step: int = 64  # default aspect-bucket step in pixels
    # what `train` uses when the user does not say (samples: the guidance the family's pipeline is made for)
    sample_steps: int = 20
    sample_guidance: float = 7.5
    # --clip-skip: "honoured" (the conditioning is the chosen CLIP layer), "ignored" (the family's
    # conditioning is fixed at one layer, as sd-scripts keeps it: accepted with a note) or None (no CLIP
    # sequence to choose a layer of: refused)
    clip_skip: str | None = None

    def training_defaults(self, v_prediction: bool, denoiser_config: Mapping) -> dict:
        """The values of the options `train` leaves to the family: resolution, sample steps, sample guidance."""
        return {"resolution": self.resolution(v_prediction), "sample_steps": self.sample_steps,
                "sample_guidance": self.sample_guidance}

    # --- metadata -------------------------------------------------------------------------------
    checkpoint_implementation: str = ""  # modelspec.implementation of a merged single-file checkpoint
    lora_implementation: str = "diffusers"  # modelspec.implementation of a LoRA file
    a1111_sd_version: str = "Unknown"  # A1111's Lora SdVersion name (network.py): SD1, SD2, SDXL or Unknown
    lbw_blocks: bool = False  # whether the LoRA Block Weight extension's UNet blocks (lbw=) apply
    is_v2: bool = False  # kohya's `ss_v2`

    # --- what follows from the above ----------------------------------------------------------
    def __repr__(self) -> str:
        return f"<family {self.name}>"

    @property
    def te_parts(self) -> tuple[str, ...]:
        """Model-part names of the text encoders (`te`, or `te1`, `te2`...): kohya prefix without `lora_`."""
        return tuple(p[len("lora_"):] for p in self.te_prefixes)

    @property
    def parts(self) -> tuple[str, ...]:
        return ("unet",) + self.te_parts

    def te_prefix(self, index: int) -> str:
        if index >= len(self.te_prefixes):
            raise ValueError(f"family {self.name} has {len(self.te_prefixes)} text encoder(s), not {index + 1}")
        return self.te_prefixes[index]

    def te_part_of_attribute(self, attribute: str) -> str | None:
        """Model part (te, te1...) of a pipeline attribute (text_encoder, text_encoder_2...); None if not one,
        or if that encoder has no part (Flux.2's and Qwen-Image's language models take no LoRA)."""
        if attribute not in self.text_encoders:
            return None
        index = self.text_encoders.index(attribute)
        return self.te_parts[index] if index < len(self.te_parts) else None

    def attribute_of_part(self, part: str) -> str | None:
        """Pipeline attribute of a model part: unet → the denoiser, te1 → text_encoder..."""
        if part == "unet":
            return self.denoiser
        return self.text_encoders[self.te_parts.index(part)] if part in self.te_parts else None

    def objective(self, prediction_type: str) -> str:
        """The training objective for a prediction type: epsilon, v_prediction or flow_matching."""
        if prediction_type not in self.prediction_types:
            raise ValueError(f"{self.label} models predict {' or '.join(self.prediction_types)}, "
                             f"not {prediction_type}")
        return prediction_type

    # --- detection (evidence strength, 0 = not this family) ------------------------------------
    def lora_metadata_evidence(self, metadata: Mapping[str, str]) -> int:
        """From a LoRA's ss_* / modelspec.* metadata."""
        return 0

    # (kohya name prefix, name endings, input widths of the real models) of the modules whose
    # width tells the family apart: cross-attention keys, text-encoder and transformer q/k
    lora_width_probes: tuple[tuple[str, tuple[str, ...], frozenset], ...] = ()
    t5_te_prefixes: tuple[str, ...] = ()  # the te prefixes whose encoder is a T5 (its names: encoder_block_…)

    def lora_evidence(self, modules: Mapping[str, Mapping]) -> int:
        """From a LoRA's kohya module names and tensor shapes ({name: {subkey: tensor}}), every
        module counted: 0 when one of them is no module of this family (or there are none),
        1 when all are, 2 when moreover the widths read (`lora_width_probes`) are those of the
        family's real models. Widths alone never rule a family out: a tiny test model's LoRA has
        a family's names and no real width."""
        if not modules or not all(self.has_lora_module(n) for n in modules):
            return 0
        from ..formats.modules import in_features

        read = []
        for name, tensors in modules.items():
            for prefix, endings, widths in self.lora_width_probes:
                if name.startswith(prefix + "_") and name.endswith(endings):
                    width = in_features(tensors)
                    if width:
                        read.append(width in widths)
        return 2 if read and all(read) else 1

    def has_lora_module(self, name: str) -> bool:
        """Whether a kohya module name is one this family's models have."""
        for prefix in self.te_prefixes:
            if name.startswith(prefix + "_"):
                return name[len(prefix) + 1:].startswith("encoder_block_") == (prefix in self.t5_te_prefixes)
        return name.startswith(self.denoiser_prefix + "_") and self.is_denoiser_lora_name(name)

    def is_denoiser_lora_name(self, name: str) -> bool:
        """Whether a `lora_unet_…` name is a layer of this family's denoiser."""
        return False

    def checkpoint_evidence(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> int:
        """From a single-file checkpoint's tensor names and shapes (header only)."""
        return 0

    def pipeline_evidence(self, pipe, denoiser_config: Mapping | None) -> int:
        """From a loaded diffusers pipeline (`denoiser_config` when its denoiser was not loaded)."""
        return 0

    def check_checkpoint(self, ckpt) -> None:
        """Raise LoraKitError for variants of this family lorakit cannot load (inpainting, refiner)."""

    # --- metadata values -----------------------------------------------------------------------
    def base_model_version(self, v_prediction: bool) -> str:
        """kohya's `ss_base_model_version`."""
        raise NotImplementedError

    def architecture(self, v_prediction: bool) -> str:
        """SAI's `modelspec.architecture` of a checkpoint (a LoRA appends `/lora`)."""
        raise NotImplementedError

    def resolution(self, v_prediction: bool) -> int:
        """The native training resolution (modelspec.resolution when none is given)."""
        raise NotImplementedError

    def model_lora_metadata(self, denoiser_config: Mapping) -> dict[str, str]:
        """Metadata a LoRA trained on this very model carries beyond the family's (SD3's variant)."""
        return {}

    def lora_metadata(self, v_prediction: bool, previous: Mapping[str, str] | None = None) -> dict[str, str]:
        """The family's keys in a LoRA file's metadata (`previous`: the metadata being rewritten, for
        facts only it holds, such as the SD3 variant)."""
        return {"ss_base_model_version": self.base_model_version(v_prediction),
                "ss_v2": str(self.is_v2),
                "modelspec.architecture": self.architecture(v_prediction) + "/lora",
                "modelspec.implementation": self.lora_implementation}

    def checkpoint_metadata(self, v_prediction: bool) -> dict[str, str]:
        """The family's modelspec keys in a merged single-file checkpoint."""
        r = self.resolution(v_prediction)
        return {"modelspec.architecture": self.architecture(v_prediction),
                "modelspec.implementation": self.checkpoint_implementation,
                "modelspec.resolution": f"{r}x{r}"}

    # --- LoRA files ------------------------------------------------------------------------------
    lora_formats: tuple[str, ...] = ("kohya", "diffusers", "peft")  # layouts written; the first is the default

    def read_lora(self, state: Mapping, metadata: Mapping[str, str], layout: str, source: str | None) -> dict:
        """A file in one of the family's own layouts (`lora_layout`) → kohya modules, validated."""
        raise NotImplementedError

    def check_lora_names(self, modules: Mapping, source: str | None) -> None:
        """Raise LoraKitError for kohya denoiser names that are no layer of this family's model (a
        misspelt layer is an error, never a silent skip), where the family can tell."""

    def write_lora(self, modules: Mapping, layout: str, dtype, source: str | None):
        """(tensors, extra metadata) of kohya modules in one of the family's own layouts; None when
        the shared writers (formats/kohya, diffusers_fmt, peft_fmt) do it."""
        return None

    def lora_layout_of(self, keys) -> str | None:
        """Which of the family's own file layouts (those `write_lora` writes) the key names are in;
        None for none. kohya names, diffusers' `unet.`/`text_encoder.` keys and PEFT folders are
        read by formats/ for every family."""
        return None

    def lora_reading(self, shapes: Mapping[str, Sequence[int]], layout: str) -> dict | None:
        """What `read_lora` would make of a file, from its key names and shapes alone (a header):
        {kohya name: {subkey: shape-only stand-in}}; None when some key is not this family's."""
        return None

    # --- models and files ------------------------------------------------------------------------
    def config_dir(self, prediction_type: str, ckpt=None) -> Path:
        """The shipped diffusers config folder (models/configs/...) for a single file of this family
        (`ckpt`, the opened file, for families with several shipped variants)."""
        raise NotImplementedError

    def guess_prediction_type(self, ckpt) -> str | None:
        """A prediction type read from the weights when the file declares none."""
        return None

    def pipeline_from_checkpoint(self, ckpt, config_dir: Path, *, dtype, prediction_type: str, components,
                                 base_precision: str = "auto", **options):
        """A diffusers pipeline from an original-layout single file and a config folder (`options`:
        family-specific sources, e.g. SD3's `text_encoders` folder). `base_precision`: the format the
        denoiser and `big_text_encoders` end in (the loader converts what the pipeline leaves otherwise)."""
        raise NotImplementedError

    def to_original(self, denoiser=None, denoiser_config=None, vae=None, vae_config=None,
                    text_encoders: list | None = None) -> dict:
        """diffusers/transformers state dicts → one state dict in the original single-file layout."""
        raise NotImplementedError

    # Whether each targeted layer is one tensor in the family's files (diffusers folders and the
    # original single file), so that `lorakit extract` can read the layers one at a time instead of
    # loading two whole models (families with fused or row-permuted layers load them whole).
    streams_weights: bool = False

    def original_weight_keys(self, part: str, path: str, layout) -> tuple[tuple[str, ...], int | None]:
        """Where the weight of the layer at module `path` of model part `part` (unet, te, te1...)
        lies in an original-layout single file: (tensor names it may have, first found wins; which
        third of a fused q/k/v tensor it is, or None for the whole tensor). Only for
        `streams_weights` families."""
        raise NotImplementedError

    def vae_geometry(self, vae_config: Mapping) -> tuple[int, int]:
        """(pixels per latent pixel, channels of the first level) of the family's VAE, from its config."""
        channels = vae_config["block_out_channels"]
        return 2 ** (len(channels) - 1), channels[0]

    def encode_latents(self, vae, pixels):
        """Pixels [B, 3, H, W] in [-1, 1] → the latents the denoiser trains on [B, C, h, w]: the
        posterior's mean (not a sample: cached and uncached runs agree), shifted and scaled."""
        from ..latents import scaled_latents

        return scaled_latents(vae, pixels)

    def decode_latents(self, vae, latents):
        """`encode_latents` undone and decoded: [B, C, h, w] → pixels [B, 3, H, W] in [-1, 1]."""
        from ..latents import latent_scale

        scale, shift = latent_scale(vae)
        return vae.decode(latents / scale + shift, return_dict=False)[0]

    def denoiser_downsampling(self, config: Mapping) -> int:
        """How many latent pixels one denoiser cell spans: bucket sides must be multiples of it (× VAE)."""
        return 1

    def training_values(self, config: Mapping, latent_height: int, latent_width: int, checkpointed: bool) -> int:
        """At least how many values one sample's LoRA training step keeps for backward in the denoiser, read
        from its config (a lower bound: `memory` holds the measured constants), so that a batch that cannot
        fit is refused before any work."""
        raise NotImplementedError

    # Text tokens the denoiser attends to per caption (the text cache's length; a DiT's joint sequence).
    context_tokens: int = 77

    def activation_units(self, config: Mapping, latent_height: int, latent_width: int) -> tuple[int, float, str]:
        """(units per block, blocks, kind) the memory plan scales activations by: kind `unet` counts latent
        pixels × the width of the first level (one "block"), kind `dit` image and text tokens × token width,
        times its blocks weighed by their work (memory_plan.py holds the values per unit, measured)."""
        raise NotImplementedError

    def block_count(self, config: Mapping) -> int:
        """Transformer blocks in the denoiser (what block swap can move); 0 for none."""
        return 0

    # --- kohya names of denoiser modules -------------------------------------------------------
    def denoiser_layout(self, config: Mapping | None):
        """Whatever the name translation needs from the denoiser config (None when there is none)."""
        return None

    def lbw_block(self, target, layout) -> str | None:
        """The LoRA Block Weight extension's block id (BASE, IN04, M00, OUT03...) of a LoRA target; None
        for a layer in no block (its weight stays 1). Only where `lbw_blocks`."""
        raise NotImplementedError

    def reference_layout(self):
        """The layout names refer to when no model is at hand (the family's base model)."""
        return None

    def denoiser_path(self, path: str, layout) -> str:
        """The model's module path of a denoiser path read from a kohya name (`layout`: as
        `denoiser_layout` gives it, None for the family's reference layout)."""
        return path

    def kohya_denoiser_names(self, path: str, layout) -> tuple[str, ...]:
        """Every kohya name a file may use for the denoiser module at `path`; the first is the one written."""
        return (self.denoiser_prefix + "_" + path.replace(".", "_"),)

    def denoiser_targets(self, denoiser) -> dict | None:
        """{kohya name: lora.targets.Target} when the family names the denoiser's layers itself
        (layers a file holds fused, rows in another order); None: one Target per Linear/Conv2d by
        `kohya_denoiser_names`."""
        return None

    # --- target presets ------------------------------------------------------------------------
    denoiser_containers: frozenset = frozenset()  # class names of the blocks presets choose from

    def denoiser_selected(self, path: str, container: str, preset: str) -> bool:
        """Whether preset `preset` adapts the denoiser layer at `path` inside a `container` block."""
        return False

    # --- conditioning and the denoiser call --------------------------------------------------------
    frozen_text_encoders: tuple[str, ...] = ()  # encoders that never get a LoRA; cached, then released
    # encoders as big as a denoiser (T5-XXL, 4.7 B): stored in the base precision the denoiser is (fp8,
    # int8, nf4...), where the small CLIPs stay in the run's own precision
    big_text_encoders: tuple[str, ...] = ()
    # whether `train` adds a text-encoder LoRA when the user does not say: kohya's train_network and
    # sdxl_train_network do (unless --network_train_unet_only), and on the toy world a UNet-only LoRA
    # let the trigger leak into the shape whose prompts sit nearest it (benchmarks/demo_seeds.py)
    trains_text_encoder_by_default: bool = True
    frozen_outputs: tuple[str, ...] = ()  # the conditioning keys they give (kept in the text cache)
    classic_attention: bool = True  # whether diffusers' classic AttnProcessor serves the denoiser (--no-sdpa)

    def tokenize(self, tokenizers: Sequence, captions: Sequence[str]) -> list:
        """Token ids, one tensor per tokenizer (padded to each tokenizer's length)."""
        return [tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids for tok in tokenizers]

    def encode_text(self, encoders: Sequence, tokenizers: Sequence, ids: Sequence, cached=None) -> dict:
        """Token ids (one tensor per tokenizer) → the conditioning tensors {hidden, pooled...};
        `cached` holds what released `frozen_text_encoders` gave."""
        raise NotImplementedError

    def prompt_inputs(self, pipe, prompt: str, negative: str, guidance: float) -> dict | None:
        """The pipeline's call arguments that stand for `prompt` and `negative` (its own encode_prompt's
        embeddings), so that generation can encode first and release the text encoders before the
        denoiser loads; None: this family's encoders are small enough to stay beside the denoiser."""
        return None

    def unpack_pipeline_latents(self, pipe, latents, height: int, width: int):
        """The latents a pipeline returns with output_type="latent", in the VAE's layout (what its own call
        does before decoding), so that generation can release the denoiser before the VAE decode."""
        return latents

    def timestep_shift(self, scheduler_config: Mapping, height: int, width: int) -> float | None:
        """A flow-matching timestep shift μ for latents of this size (Flux's resolution-dependent one);
        None: the scheduler's own sigmas."""
        return None

    def extra_inputs(self, samples: Sequence) -> dict:
        """Per-sample denoiser inputs beyond text (SDXL's size time ids); samples are data.Sample."""
        return {}

    def predict(self, denoiser, noisy, t, cond: Mapping, extra: Mapping, dtype):
        """One denoiser forward: the model output the objective compares with its target."""
        raise NotImplementedError
