"""kohya module names ↔ module paths inside the diffusers UNet / transformers CLIP models.

A kohya name replaced every "." of the path by "_", and many module names contain "_" too, so
the path is recovered with the vocabulary of module names SD models use (longest match first).
When a model is at hand its targets index gives the path directly (see `path_for`).
"""

from __future__ import annotations

from .. import families
from ..kohya_names import DENOISER_PREFIX, kohya_name, part_of, te_path_for_name
from ..errors import LoraKitError

PARTS = ("unet", "te", "te1", "te2", "te3")
DIFFUSERS_PREFIX = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2",
                    "te3": "text_encoder_3"}

# Module names with underscores in diffusers UNets, the SAI/LDM UNet and transformers' CLIP.
_VOCAB = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "proj_in", "proj_out", "to_q", "to_k",
    "to_v", "to_out", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out", "conv_norm_out",
    "time_embedding", "linear_1", "linear_2", "add_embedding", "cond_proj", "class_embedding",
    "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
    "skip_connection", "time_embed", "label_emb",
    "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "final_layer_norm", "layer_norm1",
    "layer_norm2", "text_projection", "token_embedding", "position_embedding",
}
_MAX_WORDS = max(len(w.split("_")) for w in _VOCAB)


def layout_for(family: str | None):
    """The layout kohya names refer to: the family's base model's; when the family is unknown (or
    has none), that of the family unknown LoRAs are read by (families.fallback)."""
    spec = families.find(family)
    return (spec.reference_layout() if spec else None) or families.fallback().reference_layout()


def kohya_part(part: str, family: str | None) -> str:
    """The kohya part of a text encoder named by its diffusers attribute (te = text_encoder,
    te2 = text_encoder_2): te becomes te1 in a family with several text encoders."""
    spec = families.find(family)
    if spec is None or part == "unet":
        return part
    return spec.te_part_of_attribute(DIFFUSERS_PREFIX[part]) or part


def underscored_to_path(s: str) -> str:
    """`down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0` → `down_blocks.0.….to_out.0`."""
    tokens = s.split("_")
    out, i = [], 0
    while i < len(tokens):
        for width in range(min(_MAX_WORDS, len(tokens) - i), 0, -1):
            word = "_".join(tokens[i:i + width])
            if width == 1 or word in _VOCAB:
                out.append(word)
                i += width
                break
    return ".".join(out)


def split_name(name: str) -> tuple[str, str]:
    """`lora_te1_text_model_…` → (`te1`, `text_model_…`)."""
    part = part_of(name)
    if part == "unknown":
        raise ValueError(f"not a kohya module name: {name}")
    return part, name[len(f"lora_{part}_"):]


def kohya_to_path(name: str, layout=None) -> tuple[str, str]:
    """(part, module path) of a kohya name; UNet paths come out in diffusers spelling.

    SAI spellings (kohya's SDXL names) are translated with `layout`, by default the reference
    layout of the family unknown LoRAs are read by (families.fallback).
    Text-encoder paths keep kohya's `text_model.` prefix.
    """
    part, rest = split_name(name)
    path = underscored_to_path(rest)
    if part == "unet":
        path = families.fallback().denoiser_path(path, layout)
    return part, path


def path_to_kohya(part: str, path: str, family: str | None, layout=None) -> str:
    """The kohya name lorakit writes for a module path (the family's spelling: SAI for SDXL UNets)."""
    if part == "unet":
        spec = families.find(family)
        if spec is not None:
            return spec.kohya_denoiser_names(path, layout or layout_for(family))[0]
        return kohya_name(DENOISER_PREFIX, path)
    if part not in PARTS:
        raise ValueError(f"unknown model part {part!r}")
    return kohya_name(f"lora_{part}", te_path_for_name(path))


def path_for(name: str, parts=None, layout=None, source: str | None = None) -> tuple[str, str]:
    """(part, path) of a kohya name: from the model's index when `parts` is given, else by the rules.

    With a model, text-encoder paths are the live ones (transformers 5's CLIPTextModel has no
    `text_model.` level); without, they keep kohya's `text_model.`.
    """
    if parts is not None:
        target = parts.index().get(name)
        if target is None:
            raise LoraKitError(f"module {name} is not in the model", source)
        return target.part, target.path
    try:
        return kohya_to_path(name, layout)
    except ValueError as exc:
        raise LoraKitError(str(exc), source) from None
