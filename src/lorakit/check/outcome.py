"""What one tool does with one file, and the shared pieces the tool modules use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .filekeys import FileKeys, split_key
from .universe import Universe


@dataclass
class Outcome:
    applied: dict[str, float | None] = field(default_factory=dict)  # stem → the strength (scale) it is applied at
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why), keys the tool leaves unused
    refused: str | None = None  # why the tool loads nothing of the file at all
    notes: list[str] = field(default_factory=list)

    def skip(self, keys, why: str) -> None:
        for key in keys:
            self.skipped.append((key, why))


def us(path: str) -> str:
    return path.replace(".", "_")


def module_paths(u: Universe) -> dict[int, tuple[str, str]]:
    """id(live module) → (part, path): the layers a fused target's pieces are."""
    spec = u.spec
    out = {}
    for attribute, part in [(spec.denoiser, "unet"), *zip(spec.text_encoders, spec.te_parts)]:
        model = u.components.get(attribute)
        if model is not None:
            for name, module in model.named_modules():
                out[id(module)] = (part, name)
    return out


def kohya_groups(u: Universe) -> dict[str, tuple[tuple[str, str], ...]]:
    """Every kohya name lorakit knows for the model (all spellings) → the live layers it covers,
    as (part, live module path)."""
    where = module_paths(u)
    out = {}
    for name, target in u.parts().index().items():
        if target.pieces:
            out[name] = tuple(where[id(m)] for m, _ in target.pieces)
        else:
            out[name] = (where.get(id(target.module), (target.part, target.path)),)
    return out


def scale(fk: FileKeys, keys: Mapping[str, str], rank: int | None) -> float:
    """kohya's convention, which every loader here shares: alpha / rank, 1 without an alpha."""
    if ".alpha" not in keys or not rank:
        return 1.0
    return fk.alphas.get(keys[".alpha"], float(rank)) / rank


def stem_of(key: str) -> str:
    return split_key(key)[0]


__all__ = ["Outcome", "kohya_groups", "module_paths", "scale", "stem_of", "us"]
