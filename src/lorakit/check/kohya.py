"""kohya sd-scripts' LoRA key rules when it loads a file to generate or to resume
(`create_network_from_weights` + `load_state_dict(strict=False)`).

Source read: kohya-ss/sd-scripts @ 48d368fa557731ad0488c07304dfeba8c07910eb networks/lora.py
(`create_network_from_weights`, `LoRANetwork.create_modules`, `convert_diffusers_to_sai_if_needed`,
`LoRAModule.__init__`), networks/lora_flux.py and networks/lora_sd3.py (the same, for Flux.1 /
Chroma and SD3).

The rules, as the source has them:
- A module is made for NAME (`key.split(".")[0]`) when a key of it contains `lora_down`, and only
  when NAME is a Linear/Conv2d inside a target block: in a UNet Transformer2DModel, ResnetBlock2D,
  Downsample2D, Upsample2D; in a text encoder CLIPAttention, CLIPSdpaAttention, CLIPMLP (T5Attention,
  T5DenseGatedActDense for T5); in Flux.1 the double and single blocks, in SD3 the joint blocks.
  Names: `lora_unet_` + the path in sd-scripts' own model (diffusers spelling for SD 1.x/2.x, SAI
  spelling for SDXL, where diffusers-spelled UNet names are converted first; BFL/SAI for the
  transformers), `lora_te_` (one text encoder) or `lora_te1_`/`lora_te2_`/`lora_te3_`.
- Weights are loaded with strict=False: any other key (diffusers/PEFT names, LyCORIS factors,
  a misspelt layer) is dropped without a word; a module without its `lora_up` keeps the zero
  initialisation and changes nothing.
- Strength: alpha / rank, with alpha = rank when the `.alpha` key is missing.
"""

from __future__ import annotations

from .filekeys import FileKeys
from .outcome import Outcome, kohya_groups, scale, us
from .universe import Universe

NAME = "kohya sd-scripts"
SOURCE = "kohya-ss/sd-scripts@48d368f networks/lora.py, lora_flux.py, lora_sd3.py"

_UNET_BLOCKS = frozenset({"Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"})
_TE_BLOCKS = frozenset({"CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP"})
# the transformers' blocks sd-scripts makes modules in, by the kohya names they give
_TRANSFORMER_BLOCKS = {
    "FluxTransformer2DModel": ("lora_unet_double_blocks_", "lora_unet_single_blocks_"),
    "ChromaTransformer2DModel": ("lora_unet_double_blocks_", "lora_unet_single_blocks_"),
    "SD3Transformer2DModel": ("lora_unet_joint_blocks_",),
}


def runs(spec) -> bool:
    return spec.denoiser == "unet" or spec.denoiser_class in _TRANSFORMER_BLOCKS


def module_names(u: Universe) -> set[str]:
    """The names sd-scripts makes modules under for this model (when a file holds them)."""
    spec = u.spec
    names: set[str] = set()
    groups = kohya_groups(u)
    if spec.denoiser == "unet":
        sai = getattr(spec, "sai_names", False)
        for layer in u.of_part("unet"):
            if layer.container not in _UNET_BLOCKS:
                continue
            spelled = spec.kohya_denoiser_names(layer.path, u.layout)
            names.add(spelled[0] if sai else "lora_unet_" + us(layer.path))
    else:
        heads = _TRANSFORMER_BLOCKS[spec.denoiser_class]
        names.update(n for n in groups if n.startswith(heads))
    for layer in u.layers:
        if layer.part != "unet" and (layer.container in _TE_BLOCKS or _t5_block(layer)):
            names.add(f"lora_{layer.part}_{us(layer.path)}")
    return names


def _t5_block(layer) -> bool:
    path = layer.path
    return path.startswith("encoder.block.") and (".SelfAttention." in path or ".DenseReluDense." in path)


def _sai_of_diffusers(u: Universe) -> dict[str, str]:
    """convert_diffusers_to_sai_if_needed: diffusers-spelled UNet names → the SAI names (SDXL)."""
    spec = u.spec
    out = {}
    for layer in u.of_part("unet"):
        spelled = spec.kohya_denoiser_names(layer.path, u.layout)
        out["lora_unet_" + us(layer.path)] = spelled[0]
    return out


def load(fk: FileKeys, u: Universe) -> Outcome:
    out = Outcome()
    spec = u.spec
    names = module_names(u)
    rename = {}
    if spec.denoiser == "unet" and getattr(spec, "sai_names", False) and \
            any("down_blocks" in k or "up_blocks" in k for k in fk.shapes):
        rename = _sai_of_diffusers(u)
    grouped: dict[str, dict[str, str]] = {}
    for key in fk.shapes:
        if "." not in key:
            out.skipped.append((key, "not a module key (no dot): sd-scripts drops it"))
            continue
        name, _, sub = key.partition(".")
        grouped.setdefault(rename.get(name, name), {})["." + sub] = key
    for name, keys in grouped.items():
        has_down = any("lora_down" in s for s in keys)
        if not has_down:
            why = "no lora_down key: networks.lora makes no module (LyCORIS and diffusers keys need another loader)"
            out.skip(keys.values(), why)
            continue
        if name not in names:
            out.skip(keys.values(), "no layer sd-scripts adapts has this name: dropped (load_state_dict strict=False)")
            continue
        if ".lora_up.weight" not in keys:
            out.skip(keys.values(), "no lora_up: the module keeps its zero initialisation")
            continue
        rank = fk.shapes[keys[".lora_down.weight"]][0]
        out.applied[next(iter(keys.values())).partition(".")[0]] = scale(fk, keys, rank)
        out.skip([k for s, k in keys.items() if s not in (".lora_down.weight", ".lora_up.weight", ".alpha")],
                 "not a LoRAModule weight: dropped")
    return out
