"""Which families a diffusers/PEFT LoRA fits, from its (part, module path) keys: each family names
the text encoders its own way (text_encoder is `lora_te` in SD 1.x/2.x, `lora_te1` in the others),
so each reads the keys as it would and weighs its own reading (`families.lora_candidates`)."""

from __future__ import annotations

from typing import Mapping

from .. import families
from ..kohya_names import DENOISER_PREFIX, kohya_name
from .paths import kohya_part, path_to_kohya


def families_of_parts(provisional: Mapping[tuple[str, str], Mapping],
                      metadata: Mapping[str, str] | None) -> tuple[str, ...]:
    """The families a diffusers/PEFT LoRA given as {(part, path): tensors} fits best, parts named
    by the diffusers attributes (te = text_encoder, te2 = text_encoder_2). Each family names the
    text encoders its own way (text_encoder is `lora_te` in SD 1.x/2.x, `lora_te1` in the others)
    and weighs its own reading."""
    def name(f, part: str, path: str) -> str:  # UNet paths in their own (diffusers) spelling
        if part == "unet":
            return kohya_name(DENOISER_PREFIX, path)
        return path_to_kohya(kohya_part(part, f.name), path, f.name)

    def reading(f):
        return {name(f, p, path): t for (p, path), t in provisional.items()}

    return tuple(f.name for f in families.lora_candidates(reading, metadata))


def family_of_parts(provisional: Mapping[tuple[str, str], Mapping], metadata: Mapping[str, str] | None) -> str | None:
    """The family of a diffusers/PEFT LoRA when it tells (see `families_of_parts`), else None."""
    found = families_of_parts(provisional, metadata)
    return found[0] if len(found) == 1 else None
