"""Which format a file is in and which model family (SD1, SD2, SDXL) a LoRA is for."""

from __future__ import annotations

from typing import Iterable, Mapping

from .. import naming
from .modules import Modules, in_features, is_lycoris

_CHECKPOINT_MARKS = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.",
                     "encoder.down.", "decoder.up.", "text_model.embeddings.", "time_embedding.linear_1.")
_DIFFUSERS_MARKS = (".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".lora_linear_layer.", "_lora.down.",
                    "_lora.up.", ".lora_magnitude_vector")


def detect_format(keys: Iterable[str], metadata: Mapping[str, str] | None = None) -> str | None:
    """kohya, lycoris, diffusers, peft, checkpoint (a model, not a LoRA) or None (unknown)."""
    keys = list(keys)
    md = metadata or {}
    from . import flux_fmt, sd3_fmt

    flux_layout = flux_fmt.layout_of(keys, md)
    if flux_layout not in (None, "kohya"):
        return "flux-" + flux_layout
    sd3_layout = sd3_fmt.layout_of(keys)
    if sd3_layout not in (None, "kohya"):
        return "sd3-" + sd3_layout
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


def _family_from_metadata(md: Mapping[str, str]) -> str | None:
    version = md.get("ss_base_model_version", "")
    from ..families.flux import FAMILY as FLUX

    if FLUX.lora_metadata_evidence(md):
        return "flux"
    if version in ("sd3", "medium", "5-medium", "5-large") or md.get("modelspec.architecture", "").startswith(
            "stable-diffusion-3"):
        return "sd3"
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v2"):
        return "sd2"
    if version.startswith("sd_v1"):
        return "sd1"
    arch = md.get("modelspec.architecture", "")
    if arch.startswith("stable-diffusion-xl"):
        return "sdxl"
    if arch.startswith("stable-diffusion-v2"):
        return "sd2"
    if arch.startswith("stable-diffusion-v1"):
        return "sd1"
    if md.get("ss_v2") == "True":
        return "sd2"
    return None


_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def detect_family(modules: Modules, metadata: Mapping[str, str] | None = None) -> str | None:
    """sd1 / sd2 / sdxl from metadata first, then names (two text encoders → SDXL), then widths
    (cross-attention context 768 / 1024 / 2048, text encoder 768 / 1024); None when undecidable."""
    family = _family_from_metadata(metadata or {})
    if family:
        return family
    from ..families.flux import FAMILY as FLUX
    from .sd3_fmt import is_sd3_modules

    if FLUX.lora_evidence(modules):
        return "flux"
    if is_sd3_modules(modules):
        return "sd3"
    parts = {naming.part_of(n) for n in modules}
    if parts & {"te1", "te2"}:
        return "sdxl"
    for name, tensors in modules.items():
        if name.startswith("lora_unet_") and name.endswith(("attn2_to_k", "attn2_to_v")):
            family = _CONTEXT.get(in_features(tensors) or 0)
            if family:
                return family
    for name, tensors in modules.items():
        if name.startswith("lora_te_") and name.endswith(("self_attn_q_proj", "self_attn_k_proj")):
            family = {768: "sd1", 1024: "sd2"}.get(in_features(tensors) or 0)
            if family:
                return family
    return None


def format_of_modules(modules: Modules) -> str:
    """kohya for plain LoRA (LoCon included), lycoris when any module needs a LyCORIS-aware loader."""
    return "lycoris" if any(is_lycoris(t) for t in modules.values()) else "kohya"
