"""A loaded base model: the diffusers pipeline plus what lorakit needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

FAMILIES = ("sd1", "sd2", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")
KINDS = ("diffusers", "single_file", "hub", "toy")


@dataclass
class BaseModel:
    pipe: object  # StableDiffusionPipeline or StableDiffusionXLPipeline
    family: str  # sd1 | sd2 | sdxl
    prediction_type: str  # epsilon | v_prediction
    source: str  # what the user gave: a path, a hub id, or "toy"
    kind: str  # diffusers | single_file | hub | toy
    # the UNet's config when the UNet itself is not loaded (staged loading), for size estimates
    unet_config_unloaded: dict | None = field(default=None, repr=False)

    @property
    def unet_config(self) -> dict | None:
        unet = self.unet
        return dict(unet.config) if unet is not None else self.unet_config_unloaded

    @property
    def unet(self):
        return getattr(self.pipe, "unet", None)

    @property
    def vae(self):
        return getattr(self.pipe, "vae", None)

    @property
    def text_encoders(self) -> list:
        names = ("text_encoder", "text_encoder_2") if self.family == "sdxl" else ("text_encoder",)
        return [getattr(self.pipe, n, None) for n in names]

    def parts(self):
        """What a LoRA network attaches to (lora.targets.ModelParts)."""
        from ..lora.targets import ModelParts

        unet = self.unet
        return ModelParts(self.family, unet, self.text_encoders, dict(unet.config) if unet is not None else None)

    def require_finite(self) -> None:
        """A LoraKitError naming the first weight that holds NaN or Inf: merged into, extracted
        from or saved, it would poison everything downstream. One isfinite pass per tensor."""
        from ..errors import LoraKitError
        from ..formats.kohya import count_non_finite

        names = ("unet", "text_encoder", "text_encoder_2", "vae")
        for part in names:
            module = getattr(self.pipe, part, None)
            if module is None:
                continue
            for name, p in module.named_parameters():
                bad = count_non_finite(p.detach()) if p.is_floating_point() and p.numel() else 0
                if bad:
                    raise LoraKitError(f"the base model's {part} weight {name} holds {bad} NaN/Inf value(s): "
                                       "the checkpoint is corrupt", self.source)


def detect_family(pipe, unet_config: Mapping | None = None) -> str:
    """sd1 / sd2 / sdxl of a diffusers pipeline (`unet_config` stands in for a UNet not loaded).

    Real models by width: SDXL by its pipeline class or second text encoder, then the UNet's
    cross-attention width (768 → sd1, 1024 → sd2). Small or unusual models by structure: two
    text encoders → sdxl; a linear proj_in (use_linear_projection) → sd2; otherwise sd1.
    """
    if "XL" in type(pipe).__name__ or getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    unet = getattr(pipe, "unet", None)
    config = dict(unet.config) if unet is not None else dict(unet_config or {})
    width = config.get("cross_attention_dim")
    if width == 2048:
        return "sdxl"
    if width == 768:
        return "sd1"
    if width == 1024:
        return "sd2"
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if config.get("use_linear_projection"):
        return "sd2"
    te = getattr(pipe, "text_encoder", None)
    if not config and te is not None:
        hidden = getattr(te.config, "hidden_size", None)
        if hidden == 1024 or getattr(te.config, "hidden_act", "") == "gelu":
            return "sd2"
    return "sd1"
