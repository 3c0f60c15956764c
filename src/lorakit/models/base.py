"""A loaded base model: the diffusers pipeline plus what lorakit needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .. import families

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow_matching")
KINDS = ("diffusers", "single_file", "hub", "toy")


@dataclass
class BaseModel:
    pipe: object  # the family's diffusers pipeline
    family: str  # a registered family name; ask `spec` what differs
    prediction_type: str  # epsilon | v_prediction
    source: str  # what the user gave: a path, a hub id, or "toy"
    kind: str  # diffusers | single_file | hub | toy
    denoiser_config: dict | None = None  # the denoiser's config, also when the denoiser was not loaded

    def __post_init__(self):
        if self.denoiser_config is None and self.unet is not None:
            self.denoiser_config = dict(self.unet.config)

    @property
    def spec(self) -> families.Family:
        """The family: everything that differs between SD 1.x, 2.x, XL... (lorakit.families)."""
        return families.get(self.family)

    @property
    def unet(self):
        """The denoiser (a UNet for SD 1.x/2.x/XL)."""
        return getattr(self.pipe, self.spec.denoiser, None)

    @property
    def vae(self):
        return getattr(self.pipe, "vae", None)

    @property
    def text_encoders(self) -> list:
        return [getattr(self.pipe, n, None) for n in self.spec.text_encoders]

    def parts(self):
        """What a LoRA network attaches to (lora.targets.ModelParts)."""
        from ..lora.targets import ModelParts

        unet = self.unet
        return ModelParts(self.family, unet, self.text_encoders, dict(unet.config) if unet is not None else None)

    def release(self, *names: str) -> None:
        """The pipeline's components `names` dropped and their memory given back to the system: glibc
        keeps a freed model's smaller tensors in its heap otherwise (models with a big text encoder load
        and drop parts in stages so that no two big ones sit in memory together)."""
        import gc

        from ..heap_trim import release_free_memory

        for name in names:
            if getattr(self.pipe, name, None) is not None:
                self.pipe.register_modules(**{name: None})
        gc.collect()
        release_free_memory()

    def require_finite(self) -> None:
        """A LoraKitError naming the first weight that holds NaN or Inf: merged into, extracted
        from or saved, it would poison everything downstream. One isfinite pass per tensor."""
        from ..errors import LoraKitError
        from ..formats.kohya import count_non_finite

        for part in (self.spec.denoiser, *self.spec.text_encoders, "vae"):
            module = getattr(self.pipe, part, None)
            if module is None:
                continue
            for name, p in module.named_parameters():
                bad = count_non_finite(p.detach()) if p.is_floating_point() and p.numel() else 0
                if bad:
                    raise LoraKitError(f"the base model's {part} weight {name} holds {bad} NaN/Inf value(s): "
                                       "the checkpoint is corrupt", self.source)


def detect_family(pipe, unet_config: Mapping | None = None) -> str:
    """The family name of a diffusers pipeline (`unet_config` stands in for a UNet not loaded).

    Each family weighs its own evidence (lorakit.families): the pipeline class, the text
    encoders, the denoiser's cross-attention width, then structure for small or unusual models.
    """
    found = families.detect_pipeline(pipe, unet_config)
    if found is None:
        from ..errors import LoraKitError

        raise LoraKitError(f"a {type(pipe).__name__} of no known family ({', '.join(families.names())})")
    return found.name
