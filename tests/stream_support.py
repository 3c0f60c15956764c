"""Tiny DiT transformers written as the single files users have (BFL / SAI layout, optionally as
ComfyUI's and Kijai's fp8 files), with config folders, for the streamed-load, fp8 and GGUF tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from chroma_support import TINY_TRANSFORMER as CHROMA_TINY
from flux_support import TINY_TRANSFORMER as FLUX_TINY
from sd3_support import TINY_TRANSFORMER as SD3_TINY

PREFIX = "model.diffusion_model."
# wide enough that some Linears suit nf4 (64 × 256 weights per block of scales)
FLUX_WIDE = dict(FLUX_TINY, attention_head_dim=64, axes_dims_rope=(8, 28, 28))
SD3_WIDE = dict(SD3_TINY, attention_head_dim=64, caption_projection_dim=128)


@dataclass
class Kind:
    family: str
    cls: str
    config: dict
    to_original: Callable[[dict], dict]  # diffusers state → the single file's names (no prefix)
    to_diffusers: Callable[[dict], dict]
    load: Callable  # loading.load_transformer(ckpt, config_dir, dtype, base_precision)


def kinds() -> dict[str, Kind]:
    from lorakit.families.chroma import loading as chroma_loading, naming as chroma_naming
    from lorakit.families.flux import loading as flux_loading, naming as flux_naming
    from lorakit.families.sd3 import loading as sd3_loading, naming as sd3_naming

    return {"flux": Kind("flux", "FluxTransformer2DModel", FLUX_TINY, flux_naming.diffusers_state_to_bfl,
                         flux_naming.bfl_state_to_diffusers, flux_loading.load_transformer),
            "chroma": Kind("chroma", "ChromaTransformer2DModel", CHROMA_TINY, chroma_naming.diffusers_state_to_bfl,
                           chroma_naming.bfl_state_to_diffusers, chroma_loading.load_transformer),
            "sd3": Kind("sd3", "SD3Transformer2DModel", SD3_TINY, sd3_naming.diffusers_state_to_sai,
                        sd3_naming.sai_state_to_diffusers, sd3_loading.load_transformer)}


def transformer(kind: Kind, seed: int = 0, config: dict | None = None):
    import diffusers

    torch.manual_seed(seed)
    model = getattr(diffusers, kind.cls)(**(config or kind.config)).eval()
    with torch.no_grad():  # diffusers zero-initialises some layers; a test of copies wants every value distinct
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


def config_folder(model, root: Path) -> Path:
    (root / "transformer").mkdir(parents=True, exist_ok=True)
    (root / "transformer" / "config.json").write_text(json.dumps(dict(model.config)))
    return root


def original(kind: Kind, model, dtype=torch.float32) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype).contiguous() for k, v in kind.to_original(model.state_dict()).items()}


def write(state: dict[str, torch.Tensor], path: Path, prefix: str = PREFIX) -> Path:
    from safetensors.torch import save_file

    save_file({prefix + k: v for k, v in state.items()}, str(path))
    return path


def fp8_state(state: dict[str, torch.Tensor], scaled: bool) -> tuple[dict, dict]:
    """The state as ComfyUI's fp8 files hold it: every 2-D weight in float8_e4m3fn (the rest stays),
    scaled: with its per-tensor `scale_weight` (absmax / 448), a `scale_input` and the `scaled_fp8`
    marker, as comfy/model_detection.py and ops.py read them. Returns (file state, {weight: scale})."""
    out, scales = {}, {}
    for k, v in state.items():
        if k.endswith(".weight") and v.dim() == 2:
            if scaled:
                s = (v.float().abs().amax() / 448).clamp(min=1e-12).reshape(())
                out[k] = (v.float() / s).to(torch.float8_e4m3fn)
                out[k[:-len("weight")] + "scale_weight"] = s
                out[k[:-len("weight")] + "scale_input"] = torch.ones(())
                scales[k] = s
            else:
                out[k] = v.to(torch.float8_e4m3fn)
        else:
            out[k] = v
    if scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out, scales


def dequantized_state(file_state: dict, scales: dict) -> dict[str, torch.Tensor]:
    """data × scale in fp32 for every tensor of an fp8 file state (the numbers it stands for)."""
    out = {}
    for k, v in file_state.items():
        if k.endswith((".scale_weight", ".scale_input")) or k == "scaled_fp8":
            continue
        out[k] = v.float() * scales[k] if k in scales else v.float()
    return out
