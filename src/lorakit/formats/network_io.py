"""`load_network`: a LoRA file onto a model, with the checks that make a wrong pairing an error
("this LoRA is for SDXL, the model is SD1") rather than a silently partial load."""

from __future__ import annotations

import os

from .. import families
from ..errors import LoraKitError
from ..lora import LoRANetwork, ModelParts
from .kohya import _listing
from .detect import AmbiguousFamily, describe
from .lorafile import LoRAFile, load_lora


def load_network(parts: ModelParts, path_or_file: str | os.PathLike | LoRAFile,
                 multiplier: float = 1.0, *, allow_pickle: bool = False, stage: str | None = None) -> LoRANetwork:
    """Load (if a path), check family and module names against the model, build the network.

    `stage` builds the part of the file one stage of a staged generation has loaded: "text" the
    text-encoder modules (no denoiser loaded yet), "denoiser" the denoiser's (the encoders released)."""
    if isinstance(path_or_file, LoRAFile):
        lf = path_or_file
    else:
        try:
            lf = load_lora(path_or_file, allow_pickle=allow_pickle)
        except AmbiguousFamily as exc:  # the model says which of the families the file fits it is
            _check_family(exc.candidates, parts, exc.path)
            lf = load_lora(path_or_file, parts.family, allow_pickle=allow_pickle)
    source = lf.path or "LoRA"
    _check_family((lf.family,) if lf.family else lf.candidates, parts, source)
    if lf.family is None and parts.family and lf.format in ("diffusers", "peft") and lf.path:
        lf = load_lora(lf.path, parts.family, allow_pickle=allow_pickle)  # names depend on the family (SAI spelling, lora_te1)
    index = parts.index()
    modules = lf.modules
    if stage is not None:
        denoiser = stage == "denoiser"
        modules = {n: m for n, m in modules.items() if n.startswith(parts.spec.denoiser_prefix + "_") == denoiser}
    missing = [n for n in modules if n not in index]
    if missing:
        raise LoraKitError(f"{len(missing)} of {len(lf.modules)} modules are not in the model: {_listing(missing)}",
                           source)
    return LoRANetwork.from_modules(parts, modules, multiplier, source)


def _check_family(fits, parts: ModelParts, source) -> None:
    if fits and parts.family and parts.family not in fits:
        raise LoraKitError(f"this LoRA is for {describe(fits)}, the model is {families.label(parts.family)}", source)
