"""The registry of model families: `families.get(name)` answers what differs between them. See
`base.Family` for what a family must say; each family is a package here, listed in FAMILY_MODULES.

Detection asks every family for its evidence and takes the strongest (ties: first registered).
"""

from __future__ import annotations

from importlib import import_module
from typing import Callable, Mapping

from ..errors import LoraKitError
from .base import OBJECTIVES, Family

# The family modules, each defining FAMILY, imported on first use (so that nothing below the
# registry imports a family); their order breaks detection ties. A new family is one line here.
FAMILY_MODULES = ("unet.sd1", "unet.sd2", "unet.sdxl", "sd3.family", "flux.family")

# The family whose UNet layout kohya's SAI-spelled names refer to when a LoRA's family is unknown
# (kohya spells SDXL's UNet the SAI way).
UNKNOWN_LORA_FAMILY = "sdxl"

_REGISTRY: dict[str, Family] = {}
_loaded = False


def _registry() -> dict[str, Family]:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in FAMILY_MODULES:
            register(import_module(f".{module}", __name__).FAMILY)
    return _REGISTRY


def register(family: Family) -> Family:
    if family.name in _REGISTRY:
        raise ValueError(f"family {family.name} is registered twice")
    _REGISTRY[family.name] = family
    return family


def all() -> tuple[Family, ...]:  # noqa: A001 - read as families.all()
    return tuple(_registry().values())


def names() -> tuple[str, ...]:
    return tuple(_registry())


def get(family: str | Family) -> Family:
    """The family of a name (or the family itself); a LoraKitError naming the choices otherwise."""
    if isinstance(family, Family):
        return family
    found = _registry().get(family)
    if found is None:
        raise LoraKitError(f"unknown family {family!r} ({', '.join(_registry())})")
    return found


def find(family: str | Family | None) -> Family | None:
    """Like get, but None stays None (a LoRA of unknown family)."""
    return None if family is None else get(family)


def label(family: str | Family | None) -> str:
    """SD1, SDXL...; the name itself when it is no registered family; "unknown" for None."""
    if family is None:
        return "unknown"
    return family.label if isinstance(family, Family) else getattr(_registry().get(family), "label", family)


def fallback() -> Family:
    """The family whose names a LoRA of unknown family is read by (UNKNOWN_LORA_FAMILY)."""
    return get(UNKNOWN_LORA_FAMILY)


def by_pipeline(class_name: str) -> tuple[Family, ...]:
    """The families a diffusers pipeline class can hold (SD1 and SD2 share StableDiffusionPipeline)."""
    return tuple(f for f in _registry().values() if f.pipeline_class == class_name)


def pipeline_classes() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.pipeline_class for f in _registry().values()))


def _strongest(evidence: Callable[[Family], int]) -> Family | None:
    best, score = None, 0
    for f in _registry().values():
        s = evidence(f)
        if s > score:
            best, score = f, s
    return best


def detect_lora(modules: Mapping[str, Mapping], metadata: Mapping[str, str] | None = None) -> Family | None:
    """A LoRA's family: its metadata first, then its module names and widths; None when undecidable."""
    return (_strongest(lambda f: f.lora_metadata_evidence(metadata or {}))
            or _strongest(lambda f: f.lora_evidence(modules)))


def detect_checkpoint(shapes: Mapping[str, tuple[int, ...]],
                      metadata: Mapping[str, str] | None = None) -> Family | None:
    """A single-file checkpoint's family from its header (names and shapes); None when no family claims it."""
    return _strongest(lambda f: f.checkpoint_evidence(shapes, metadata or {}))


def detect_pipeline(pipe, denoiser_config: Mapping | None = None) -> Family | None:
    """A loaded diffusers pipeline's family (`denoiser_config` stands in for a denoiser not loaded)."""
    return _strongest(lambda f: f.pipeline_evidence(pipe, denoiser_config))


__all__ = ["OBJECTIVES", "Family", "all", "by_pipeline", "detect_checkpoint", "detect_lora", "detect_pipeline",
           "fallback", "find", "get", "label", "names", "pipeline_classes", "register"]
