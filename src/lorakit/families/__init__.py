"""Model families (SD 1.x, 2.x, XL, 3.x) behind one interface: `families.get("sdxl")` answers what
differs between them. See `base.Family` for what a family must say; register a new one here.

Detection asks every family for its evidence and takes the strongest (ties: first registered).
"""

from __future__ import annotations

from typing import Callable, Mapping

from ..errors import LoraKitError
from .base import OBJECTIVES, Family
from .flux import FAMILY as FLUX
from .sd1 import FAMILY as SD1
from .sd2 import FAMILY as SD2
from .sd3 import FAMILY as SD3
from .sdxl import FAMILY as SDXL

_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in _REGISTRY:
        raise ValueError(f"family {family.name} is registered twice")
    _REGISTRY[family.name] = family
    return family


for _f in (SD1, SD2, SDXL, SD3, FLUX):
    register(_f)


def all() -> tuple[Family, ...]:  # noqa: A001 - read as families.all()
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(family: str | Family) -> Family:
    """The family of a name (or the family itself); a LoraKitError naming the choices otherwise."""
    if isinstance(family, Family):
        return family
    found = _REGISTRY.get(family)
    if found is None:
        raise LoraKitError(f"unknown family {family!r} ({', '.join(_REGISTRY)})")
    return found


def find(family: str | Family | None) -> Family | None:
    """Like get, but None stays None (a LoRA of unknown family)."""
    return None if family is None else get(family)


def label(family: str | Family | None) -> str:
    """SD1, SDXL...; the name itself when it is no registered family; "unknown" for None."""
    if family is None:
        return "unknown"
    return family.label if isinstance(family, Family) else getattr(_REGISTRY.get(family), "label", family)


def by_pipeline(class_name: str) -> tuple[Family, ...]:
    """The families a diffusers pipeline class can hold (SD1 and SD2 share StableDiffusionPipeline)."""
    return tuple(f for f in _REGISTRY.values() if f.pipeline_class == class_name)


def pipeline_classes() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.pipeline_class for f in _REGISTRY.values()))


def _strongest(evidence: Callable[[Family], int]) -> Family | None:
    best, score = None, 0
    for f in _REGISTRY.values():
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
           "find", "get", "label", "names", "pipeline_classes", "register"]
