"""The registry of model families: `families.get(name)` answers what differs between them. See
`base.Family` for what a family must say; each family is a package here, listed in FAMILY_MODULES.

Detection asks every family for its evidence and takes the strongest. A LoRA that fits several
families equally well is reported as such (`lora_candidates`), never settled by registration order.
"""

from __future__ import annotations

from importlib import import_module
from typing import Callable, Iterable, Mapping

from ..errors import LoraKitError
from .base import OBJECTIVES, Family

# The family modules, each defining FAMILY, imported on first use (so that nothing below the
# registry imports a family); their order breaks detection ties. A new family is one line here.
FAMILY_MODULES = ("unet.sd1", "unet.sd2", "unet.sdxl", "sd3.family", "flux.family", "chroma.family",
                  "zimage.family", "flux2.family", "qwenimage.family")

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
    return tuple(f for f in _registry().values() if class_name in (f.pipeline_class, *f.other_pipeline_classes))


def pipeline_classes() -> tuple[str, ...]:
    return tuple(dict.fromkeys(c for f in _registry().values() for c in (f.pipeline_class, *f.other_pipeline_classes)))


def _strongest(evidence: Callable[[Family], int]) -> Family | None:
    best, score = None, 0
    for f in _registry().values():
        s = evidence(f)
        if s > score:
            best, score = f, s
    return best


Reading = Mapping[str, Mapping] | Callable[[Family], Mapping[str, Mapping] | None]


def lora_candidates(reading: Reading, metadata: Mapping[str, str] | None = None,
                    among: Iterable[Family] | None = None) -> tuple[Family, ...]:
    """The families a LoRA may be for: the one its metadata names, else those whose evidence on
    every module is the strongest (`Family.lora_evidence`). One family when the file tells;
    several when it fits them equally well, which is truly ambiguous: a LoRA of CLIP-L alone
    (`lora_te1_…` at width 768) fits SDXL, SD3 and Flux.1, whose first text encoder is the same
    CLIP-L, and a tiny test model's LoRA has no real width to tell SD 1.x from 2.x; none when no
    family has all of its modules.

    `reading`: the file's kohya modules, or a function giving them as a family reads the file
    (None: it cannot), for files whose kohya names depend on the family. `among`: only these."""
    pool = tuple(among) if among is not None else tuple(_registry().values())
    named = _strongest(lambda f: f.lora_metadata_evidence(metadata or {}) if f in pool else 0)
    if named:
        return (named,)
    read = reading if callable(reading) else (lambda f: reading)
    scores = {}
    for f in pool:
        modules = read(f)
        scores[f] = f.lora_evidence(modules) if modules is not None else 0
    top = max(scores.values(), default=0)
    return tuple(f for f, s in scores.items() if s and s == top)


def detect_lora(modules: Reading, metadata: Mapping[str, str] | None = None) -> Family | None:
    """A LoRA's family when it tells (see `lora_candidates`); None when it fits no family or several."""
    found = lora_candidates(modules, metadata)
    return found[0] if len(found) == 1 else None


def detect_checkpoint(shapes: Mapping[str, tuple[int, ...]],
                      metadata: Mapping[str, str] | None = None) -> Family | None:
    """A single-file checkpoint's family from its header (names and shapes); None when no family claims it."""
    return _strongest(lambda f: f.checkpoint_evidence(shapes, metadata or {}))


def detect_pipeline(pipe, denoiser_config: Mapping | None = None) -> Family | None:
    """A loaded diffusers pipeline's family (`denoiser_config` stands in for a denoiser not loaded)."""
    return _strongest(lambda f: f.pipeline_evidence(pipe, denoiser_config))


__all__ = ["OBJECTIVES", "Family", "all", "by_pipeline", "detect_checkpoint", "detect_lora", "detect_pipeline",
           "fallback", "find", "get", "label", "lora_candidates", "names", "pipeline_classes", "register"]
