"""Tiny models and LoRA files for the loadability check: files lorakit writes, files other
trainers write (made with their key rules), damaged files, and a real diffusers load to compare with."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))


@lru_cache(maxsize=None)
def tiny(family: str):
    """A tiny pipeline of the family (cached: the check only reads it)."""
    if family == "flux":
        from flux_support import tiny_flux_pipeline

        return tiny_flux_pipeline()
    if family == "chroma":
        from chroma_support import tiny_chroma_pipeline

        return tiny_chroma_pipeline()
    if family == "sd3":
        from sd3_support import tiny_sd3_pipeline

        return tiny_sd3_pipeline()
    from lorakit.models.tiny import tiny_pipeline

    return tiny_pipeline(family)


def random_modules(family: str, rank: int = 4, alpha: float = 2, seed: int = 0, preset: str = "transformer"):
    """A random LoRA on the tiny model, as lorakit's kohya modules."""
    from lorakit import families
    from lorakit.lora import LoRANetwork, ModelParts

    pipe, spec = tiny(family), families.get(family)
    tes = [getattr(pipe, a) for a in spec.text_encoders if getattr(pipe, a, None) is not None]
    denoiser = getattr(pipe, spec.denoiser)
    parts = ModelParts(family, denoiser, tes, dict(denoiser.config))
    torch.manual_seed(seed)
    net = LoRANetwork.create(parts, rank=rank, alpha=alpha, preset=preset)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return {n: {k: v.detach().clone() for k, v in t.items()} for n, t in net.kohya_modules().items()}


def write(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def real_diffusers_load(family: str, path: Path) -> dict[tuple[str, str], float]:
    """{(part, module path): PEFT scaling} after diffusers' load_lora_weights into a fresh tiny
    pipeline on the CPU (real weights): the ground truth for the diffusers prediction."""
    from lorakit import families

    spec = families.get(family)
    pipe = _fresh(family)
    try:
        pipe.load_lora_weights(str(path), adapter_name="truth")
    except Exception:  # a refusal: nothing applied
        pass
    out = {}
    for attribute, part in [(spec.denoiser, "unet"), *zip(spec.text_encoders, spec.te_parts)]:
        model = getattr(pipe, attribute, None)
        if model is None:
            continue
        for name, module in model.named_modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict) and "truth" in scaling:
                out[(part, name)] = float(scaling["truth"])
    return out


def _fresh(family: str):
    if family == "flux":
        from flux_support import tiny_flux_pipeline

        return tiny_flux_pipeline()
    if family == "sd3":
        from sd3_support import tiny_sd3_pipeline

        return tiny_sd3_pipeline()
    from lorakit.models.tiny import tiny_pipeline

    return tiny_pipeline(family)
