"""`save_model(model, out)`: a diffusers folder, or one original-layout `.safetensors` for A1111/ComfyUI.

Writes are atomic (a temporary sibling, then os.replace), so an interrupted save never leaves a
half-written model under the requested name. Tensors are cast to `dtype` on the way out; the
model in memory keeps its own dtype.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import families
from ..atomic import atomic_dir, atomic_path
from ..errors import LoraKitError
from .base import BaseModel, detect_family


def _as_model(model_or_pipe) -> BaseModel:
    if isinstance(model_or_pipe, BaseModel):
        return model_or_pipe
    pipe = model_or_pipe
    config = getattr(getattr(pipe, "scheduler", None), "config", {}) or {}
    family = detect_family(pipe)
    default = families.get(family).prediction_types[0]
    return BaseModel(pipe, family, config.get("prediction_type", default), "", "diffusers")


def save_model(model_or_pipe, out: str | os.PathLike, dtype: torch.dtype | None = torch.float16, *,
               metadata: dict[str, str] | None = None) -> Path:
    """OUT ending .safetensors → original single-file layout; anything else → a diffusers folder.

    dtype None keeps each tensor's dtype. `metadata` adds header strings to a single file.
    """
    model = _as_model(model_or_pipe)
    out = Path(out)
    if out.suffix.lower() == ".safetensors":
        save_single_file(model, out, dtype, metadata)
    else:
        if out.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
            raise LoraKitError("lorakit writes .safetensors files or diffusers folders, not pickles", out)
        save_folder(model, out, dtype)
    return out


# --- single file -------------------------------------------------------------------------------

def original_state_dict(model: BaseModel, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The whole model in the original layout, tensors cast to `dtype` (floating point only)."""
    from ..families.base import LayoutError

    unet, vae, tes = model.unet, model.vae, model.text_encoders
    missing = [name for name, part in (("UNet", unet), ("VAE", vae)) if part is None]
    missing += [f"text encoder {i + 1}" for i, te in enumerate(tes) if te is None]
    if missing:
        raise LoraKitError(f"a single-file checkpoint needs every part; the model has no {', '.join(missing)}")
    try:
        state = model.spec.to_original(
            denoiser=unet.state_dict(), denoiser_config=dict(unet.config), vae=vae.state_dict(),
            vae_config=dict(vae.config), text_encoders=[te.state_dict() for te in tes])
    except LayoutError as e:
        raise LoraKitError(f"cannot write the original layout: {e}") from e
    if model.prediction_type == "v_prediction":
        state["v_pred"] = torch.tensor([])  # ComfyUI's marker; A1111 ignores unknown keys
    return {k: _cast(v, dtype) for k, v in state.items()}


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach()
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.contiguous().cpu()


def header_metadata(model: BaseModel, title: str) -> dict[str, str]:
    v = model.prediction_type == "v_prediction"
    spec = model.spec.checkpoint_metadata(v)
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": spec["modelspec.architecture"],
        "modelspec.implementation": spec["modelspec.implementation"],
        "modelspec.title": title,
        "modelspec.resolution": spec["modelspec.resolution"],
        "modelspec.prediction_type": "v" if v else "epsilon",
    }


def save_single_file(model: BaseModel, out: Path, dtype=torch.float16, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    state = original_state_dict(model, dtype)
    header = {**header_metadata(model, out.stem), **{str(k): str(v) for k, v in (metadata or {}).items()}}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=header)


# --- diffusers folder --------------------------------------------------------------------------

def save_folder(model: BaseModel, out: Path, dtype=torch.float16) -> None:
    """diffusers `save_pretrained` (safetensors) into a temporary sibling, weights cast, then swapped in."""
    if out.exists() and not out.is_dir():
        raise LoraKitError("exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise LoraKitError("exists, is not empty and is not a diffusers model folder: refusing to replace it", out)
    with atomic_dir(out) as tmp:
        model.pipe.save_pretrained(str(tmp), safe_serialization=True)
        if dtype is not None:
            for f in tmp.rglob("*.safetensors"):
                _recast_file(f, dtype)


def _recast_file(path: Path, dtype: torch.dtype) -> None:
    """save_pretrained writes the in-memory dtype; cast floating tensors without touching the model."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if all(not t.is_floating_point() or t.dtype == dtype for t in tensors.values()):
        return
    save_file({k: _cast(t, dtype) for k, t in tensors.items()}, str(path), metadata=meta)
