"""Which format a file is in and which model family a LoRA is for."""

from __future__ import annotations

from typing import Iterable, Mapping

from .. import families
from .modules import Modules, is_lycoris

_CHECKPOINT_MARKS = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.",
                     "encoder.down.", "decoder.up.", "text_model.embeddings.", "time_embedding.linear_1.")
_DIFFUSERS_MARKS = (".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".lora_linear_layer.", "_lora.down.",
                    "_lora.up.", ".lora_magnitude_vector")


def detect_format(keys: Iterable[str], metadata: Mapping[str, str] | None = None) -> str | None:
    """kohya, lycoris, diffusers, peft, checkpoint (a model, not a LoRA) or None (unknown)."""
    keys = list(keys)
    md = metadata or {}
    own = own_layout_claim(keys, md)
    if own is not None:
        return f"{own[0].name}-{own[1]}"
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")) for k in keys):
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


def own_layout_claim(keys: list[str], metadata: Mapping[str, str]) -> tuple[families.Family, str] | None:
    """(family, layout) of a file in a layout of a family's own (SD3's or Flux's diffusers keys...);
    the strongest claim wins. None: the shared readers read it."""
    best, strength = None, 0
    for family in families.all():
        layout, s = family.lora_layout(keys, metadata)
        if layout is not None and s > strength:
            best, strength = (family, layout), s
    return best


def own_layout(fmt: str | None) -> tuple[families.Family, str] | None:
    """(family, layout) of a `detect_format` answer such as `<family>-diffusers`; None for a shared format."""
    name, sep, layout = (fmt or "").partition("-")
    return (families.get(name), layout) if sep and name in families.names() else None


def detect_family(modules: Modules, metadata: Mapping[str, str] | None = None) -> str | None:
    """The family name of a LoRA from its metadata first, then its names and widths (each family
    says what it recognises: lorakit.families); None when undecidable (e.g. a tiny model's LoRA)."""
    found = families.detect_lora(modules, metadata)
    return found.name if found else None


def family_of_parts(provisional: Mapping[tuple[str, str], Mapping], metadata: Mapping[str, str] | None) -> str | None:
    """The family of a diffusers/PEFT LoRA given as {(part, path): tensors}, parts named by the
    diffusers attributes (te = text_encoder, te2 = text_encoder_2): the text encoders present decide
    when only one family has them all, else the kohya names and widths do."""
    from .paths import DIFFUSERS_PREFIX, path_to_kohya

    attributes = {DIFFUSERS_PREFIX[p] for p, _ in provisional if p != "unet"}
    holders = [f for f in families.all() if attributes <= set(f.text_encoders)]
    if len(holders) == 1 and len(holders) < len(families.all()):
        return holders[0].name
    probe = {path_to_kohya(p, path, None): t for (p, path), t in provisional.items()}
    return detect_family(probe, metadata)


def format_of_modules(modules: Modules) -> str:
    """kohya for plain LoRA (LoCon included), lycoris when any module needs a LyCORIS-aware loader."""
    return "lycoris" if any(is_lycoris(t) for t in modules.values()) else "kohya"
