"""A loaded base model: the diffusers pipeline plus what lorakit needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")
PREDICTION_TYPES = ("epsilon", "v_prediction")
FLOW_MATCHING = "flow_matching"  # SD3's objective: the model predicts noise − latents
KINDS = ("diffusers", "single_file", "hub", "toy")


@dataclass
class BaseModel:
    pipe: object  # StableDiffusionPipeline or StableDiffusionXLPipeline
    family: str  # sd1 | sd2 | sdxl
    prediction_type: str  # epsilon | v_prediction
    source: str  # what the user gave: a path, a hub id, or "toy"
    kind: str  # diffusers | single_file | hub | toy

    @property
    def unet(self):
        """The denoiser: the UNet, or SD3's MMDiT transformer."""
        unet = getattr(self.pipe, "unet", None)
        return unet if unet is not None else getattr(self.pipe, "transformer", None)

    @property
    def vae(self):
        return getattr(self.pipe, "vae", None)

    @property
    def text_encoders(self) -> list:
        names = {"sdxl": ("text_encoder", "text_encoder_2"),
                 "sd3": ("text_encoder", "text_encoder_2", "text_encoder_3"),
                 "flux": ("text_encoder", "text_encoder_2")}.get(self.family, ("text_encoder",))
        return [getattr(self.pipe, n, None) for n in names]

    def parts(self):
        """What a LoRA network attaches to (lora.targets.ModelParts)."""
        from ..lora.targets import ModelParts

        unet = self.unet
        if self.family == "flux":
            from ..families.flux import FAMILY as FLUX

            return ModelParts(self.family, unet, self.text_encoders, dict(unet.config) if unet is not None else None,
                              FLUX.denoiser_targets)
        if self.family == "sd3":
            from ..lora.mmdit import transformer_targets

            return ModelParts(self.family, unet, self.text_encoders, dict(unet.config) if unet is not None else None,
                              transformer_targets)
        return ModelParts(self.family, unet, self.text_encoders, dict(unet.config) if unet is not None else None)


def detect_family(pipe, unet_config: Mapping | None = None) -> str:
    """sd1 / sd2 / sdxl of a diffusers pipeline (`unet_config` stands in for a UNet not loaded).

    Real models by width: SDXL by its pipeline class or second text encoder, then the UNet's
    cross-attention width (768 → sd1, 1024 → sd2). Small or unusual models by structure: two
    text encoders → sdxl; a linear proj_in (use_linear_projection) → sd2; otherwise sd1.
    """
    from ..families.flux import FAMILY as FLUX

    if FLUX.pipeline_evidence(pipe, unet_config):
        return "flux"
    if "StableDiffusion3" in type(pipe).__name__ or getattr(pipe, "transformer", None) is not None:
        return "sd3"
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
