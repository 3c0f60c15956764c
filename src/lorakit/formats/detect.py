"""Which format a file is in and which model family a LoRA is for, from every key of the file.

`detect` needs names and shapes only (a file's header), so the UI library and `load_lora` decide
alike. A file that fits several families equally well names them all (`Detection.families`);
nothing here settles such a tie by guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .. import families
from ..errors import LoraKitError
from .modules import Modules, Shaped, is_lycoris
from .part_families import families_of_parts

_CHECKPOINT_MARKS = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.",
                     "encoder.down.", "decoder.up.", "text_model.embeddings.", "time_embedding.linear_1.")
_DIFFUSERS_MARKS = (".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".lora_linear_layer.", "_lora.down.",
                    "_lora.up.", ".lora_magnitude_vector")
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")


class AmbiguousFamily(LoraKitError):
    """The file fits several families equally well and reading it needs one of them."""

    def __init__(self, candidates: Sequence[str], source=None):
        self.candidates = tuple(candidates)
        super().__init__(f"its keys and widths fit {describe(self.candidates, 'and')} alike: say which with "
                         f"--family ({', '.join(self.candidates)})", source)


@dataclass(frozen=True)
class Detection:
    format: str | None  # kohya, lycoris, diffusers, peft, comfyui, onetrainer, checkpoint; None: unknown
    families: tuple[str, ...] = ()  # the families it fits best: one when it tells, several when ambiguous
    layouts: Mapping[str, str] = field(default_factory=dict)  # family → its own layout the names are in

    @property
    def family(self) -> str | None:
        return self.families[0] if len(self.families) == 1 else None


def describe(candidates: Sequence[str], conjunction: str = "or") -> str:
    """`SDXL, SD3 or Flux.1`."""
    labels = [families.label(c) for c in candidates]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + f" {conjunction} " + labels[-1]


def _shared_format(keys: list[str], md: Mapping[str, str]) -> str | None:
    """The layouts formats/ reads for every family."""
    if any(k.startswith(_KOHYA_PREFIXES) for k in keys):
        from . import kohya

        lyco_keys = any(".hada_" in k or ".lokr_" in k or k.endswith((".lora_mid.weight", ".dora_scale", ".diff"))
                        for k in keys if kohya.is_kohya_key(k))
        if lyco_keys or md.get("ss_network_module", "").startswith("lycoris"):
            return "lycoris"
        return "kohya"
    if any(k.startswith("base_model.model.") for k in keys):
        return "peft"
    if any(m in k for k in keys for m in _DIFFUSERS_MARKS):
        return "diffusers"
    if any(k.startswith(_CHECKPOINT_MARKS) for k in keys) or any(
            k.endswith((".weight", ".bias")) and "lora" not in k for k in keys):
        return "checkpoint"
    return None


def _own_layouts(keys: list[str]) -> dict[str, str]:
    return {f.name: layout for f in families.all() if (layout := f.lora_layout_of(keys))}


def detect_format(keys: Iterable[str], metadata: Mapping[str, str] | None = None) -> str | None:
    """kohya, lycoris, diffusers, peft, comfyui, onetrainer, checkpoint (a model, not a LoRA) or None."""
    keys = list(keys)
    own = _own_layouts(keys)
    return next(iter(own.values())) if own else _shared_format(keys, metadata or {})


def _kohya_reading(shapes: Mapping[str, Sequence[int]]) -> dict[str, dict[str, Shaped]]:
    modules: dict[str, dict[str, Shaped]] = {}
    for key, shape in shapes.items():
        name, dot, sub = key.partition(".")
        if dot:
            modules.setdefault(name, {})[sub] = Shaped(shape)
    return modules


def _diffusers_reading(shapes: Mapping[str, Sequence[int]]) -> dict[tuple[str, str], dict[str, Shaped]] | None:
    from .diffusers_fmt import parse_key

    roles = {"down": "lora_down.weight", "up": "lora_up.weight"}
    provisional: dict[tuple[str, str], dict[str, Shaped]] = {}
    for key, shape in shapes.items():
        parsed = parse_key(key)
        if parsed is None:
            return None
        part, path, role = parsed
        if role in roles:
            provisional.setdefault((part, path), {})[roles[role]] = Shaped(shape)
    return provisional


def detect(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, str] | None = None) -> Detection:
    """Format and candidate families of a file from all its key names and shapes ({key: shape})."""
    md = metadata or {}
    keys = list(shapes)
    own = _own_layouts(keys)
    if own:  # a family's own layout (SD3's and Flux's transformer keys): each such family reads it
        found = families.lora_candidates(lambda f: f.lora_reading(shapes, own[f.name]) if f.name in own else None,
                                         md, among=[families.get(n) for n in own])
        names = tuple(f.name for f in found)
        return Detection(own[names[0]] if names else next(iter(own.values())), names, own)
    fmt = _shared_format(keys, md)
    if fmt in ("kohya", "lycoris"):
        return Detection(fmt, family_candidates(_kohya_reading(shapes), md))
    if fmt == "diffusers":
        provisional = _diffusers_reading(shapes)
        return Detection(fmt, families_of_parts(provisional, md) if provisional else ())
    if fmt == "checkpoint":  # a base model (fp8 and GGUF-named ones too): the family its names say
        found = families.detect_checkpoint(shapes, md)
        return Detection(fmt, (found.name,) if found is not None else ())
    return Detection(fmt)


def family_candidates(modules: Modules, metadata: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The families kohya modules fit best (see families.lora_candidates)."""
    return tuple(f.name for f in families.lora_candidates(modules, metadata))


def detect_family(modules: Modules, metadata: Mapping[str, str] | None = None) -> str | None:
    """The family name of a LoRA from its metadata first, then its names and widths (each family
    says what it recognises: lorakit.families); None when it fits no family or several."""
    found = family_candidates(modules, metadata)
    return found[0] if len(found) == 1 else None


def format_of_modules(modules: Modules) -> str:
    """kohya for plain LoRA (LoCon included), lycoris when any module needs a LyCORIS-aware loader."""
    return "lycoris" if any(is_lycoris(t) for t in modules.values()) else "kohya"
