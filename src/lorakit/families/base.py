"""The interface every model family answers: what differs between SD 1.x, 2.x, XL (and later
SD 3.x, Flux.1) is asked of a `Family`, never decided by comparing family names elsewhere.

A family is a stateless object: class attributes for the facts (component names, kohya prefixes,
metadata values), methods for what needs the weights at hand (detection, conditioning, the
denoiser call, the single-file layout). Diffusers and transformers are imported inside methods
only, so `lora/` and `formats/` may ask a family without importing them.

Detection methods return an evidence strength (0 = not this family); the registry picks the
family with the strongest evidence, so no family needs to know the others' markers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "models" / "configs"
OBJECTIVES = ("epsilon", "v_prediction", "flow_matching")


class Family:
    # --- identity ------------------------------------------------------------------------------
    name: str = ""  # registry key; what BaseModel.family, ModelParts.family and LoRAFile.family hold
    label: str = ""  # for messages: "SD1", "SDXL"

    # --- diffusers pipeline and components ------------------------------------------------------
    pipeline_class: str = ""  # diffusers pipeline class (model_index.json `_class_name`)
    pipeline_kwargs: Mapping[str, Any] = {}  # extra from_pretrained/constructor kwargs (safety checker off)
    denoiser: str = "unet"  # pipeline attribute of the network the LoRA adapts: unet / transformer
    denoiser_class: str = ""  # its diffusers class
    text_encoders: tuple[str, ...] = ()  # pipeline attributes, in kohya order (lora_te1 is the first)
    tokenizers: tuple[str, ...] = ()  # pipeline attributes, one per text encoder
    tokenizer_pads: tuple[str, ...] = ()  # pad token of each shipped CLIP BPE tokenizer

    # --- kohya names ----------------------------------------------------------------------------
    denoiser_prefix: str = "lora_unet"  # kohya prefix of the denoiser's modules (lora_unet for every family)
    te_prefixes: tuple[str, ...] = ()  # kohya prefix per text encoder: (lora_te,) or (lora_te1, lora_te2, ...)

    # --- training -------------------------------------------------------------------------------
    prediction_types: tuple[str, ...] = ("epsilon",)  # accepted --prediction-type values, default first
    presets: tuple[str, ...] = ("attn", "cross-attn", "transformer", "full")  # target presets, kohya's first
    bucket_step: int = 64  # default aspect-bucket step in pixels

    # --- metadata -------------------------------------------------------------------------------
    checkpoint_implementation: str = ""  # modelspec.implementation of a merged single-file checkpoint
    lora_implementation: str = "diffusers"  # modelspec.implementation of a LoRA file
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
        """Model part (te, te1...) of a pipeline attribute (text_encoder, text_encoder_2...); None if not one."""
        return self.te_parts[self.text_encoders.index(attribute)] if attribute in self.text_encoders else None

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

    def lora_evidence(self, modules: Mapping[str, Mapping]) -> int:
        """From a LoRA's kohya module names and tensor shapes ({name: {subkey: tensor}})."""
        return 0

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

    def lora_metadata(self, v_prediction: bool) -> dict[str, str]:
        """The family's keys in a LoRA file's metadata."""
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

    # --- models and files ------------------------------------------------------------------------
    def config_dir(self, prediction_type: str) -> Path:
        """The shipped diffusers config folder (models/configs/...) for a single file of this family."""
        raise NotImplementedError

    def guess_prediction_type(self, ckpt) -> str | None:
        """A prediction type read from the weights when the file declares none."""
        return None

    def pipeline_from_checkpoint(self, ckpt, config_dir: Path, *, dtype, prediction_type: str, components):
        """A diffusers pipeline from an original-layout single file and a config folder."""
        raise NotImplementedError

    def to_original(self, denoiser=None, denoiser_config=None, vae=None, vae_config=None,
                    text_encoders: list | None = None) -> dict:
        """diffusers/transformers state dicts → one state dict in the original single-file layout."""
        raise NotImplementedError

    def denoiser_downsampling(self, config: Mapping) -> int:
        """How many latent pixels one denoiser cell spans: bucket sides must be multiples of it (× VAE)."""
        return 1

    # --- kohya names of denoiser modules -------------------------------------------------------
    def denoiser_layout(self, config: Mapping | None):
        """Whatever the name translation needs from the denoiser config (None when there is none)."""
        return None

    def reference_layout(self):
        """The layout names refer to when no model is at hand (the family's base model)."""
        return None

    def kohya_denoiser_names(self, path: str, layout) -> tuple[str, ...]:
        """Every kohya name a file may use for the denoiser module at `path`; the first is the one written."""
        return (self.denoiser_prefix + "_" + path.replace(".", "_"),)

    # --- target presets ------------------------------------------------------------------------
    denoiser_containers: frozenset = frozenset()  # class names of the blocks presets choose from

    def denoiser_selected(self, path: str, container: str, preset: str) -> bool:
        """Whether preset `preset` adapts the denoiser layer at `path` inside a `container` block."""
        return False

    # --- conditioning and the denoiser call --------------------------------------------------------
    def encode_text(self, encoders: Sequence, tokenizers: Sequence, ids: Sequence) -> dict:
        """Token ids (one tensor per tokenizer) → the conditioning tensors {hidden, pooled...}."""
        raise NotImplementedError

    def extra_inputs(self, samples: Sequence) -> dict:
        """Per-sample denoiser inputs beyond text (SDXL's size time ids); samples are data.Sample."""
        return {}

    def predict(self, denoiser, noisy, t, cond: Mapping, extra: Mapping, dtype):
        """One denoiser forward: the model output the objective compares with its target."""
        raise NotImplementedError
