"""What the DiT families' single-file loaders share: a transformer file plus the shipped configs,
and the parts a file lacks (text encoders, tokenizers, VAE) taken from a diffusers-style folder
(`--text-encoders DIR`) or the Hugging Face cache, never the network; and writing the original
layout back as one file with SAI's model-spec header.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Mapping

import torch

from ...errors import LoraKitError
from ...models.single_file import quiet_loading

# sub-folder → (library, class, what the error calls it)
Part = tuple[str, str, str]


def _load(part: Part, where: str, sub: str, dtype, **kwargs):
    lib, cls, _ = part
    if not sub.startswith("tokenizer"):
        kwargs["torch_dtype"] = dtype
    with quiet_loading():
        return getattr(importlib.import_module(lib), cls).from_pretrained(where, local_files_only=True, **kwargs)


def from_folder(folder: Path, sub: str, part: Part, dtype):
    """A component from a diffusers-style folder, or None when it has none."""
    path = folder / sub
    if not path.is_dir():
        return None
    try:
        return _load(part, str(path), sub, dtype)
    except Exception as e:  # noqa: BLE001 - missing or corrupt files come in many error types
        raise LoraKitError(f"cannot load {sub}: {e}", path) from e


def from_hub_cache(repo: str, sub: str, part: Part, dtype):
    """A component from the Hugging Face cache, or None when it is not there."""
    try:
        return _load(part, repo, sub, dtype, subfolder=sub)
    except Exception:  # noqa: BLE001 - not in the cache
        return None


def parts_folder(text_encoders: Path | None, holding: str) -> Path | None:
    """The `--text-encoders` folder, checked: a LoraKitError saying what it must hold otherwise."""
    if text_encoders is None:
        return None
    folder = Path(text_encoders)
    if not folder.is_dir():
        raise LoraKitError(f"--text-encoders must be a folder holding {holding}", folder)
    return folder


def gather(parts: Mapping[str, Part], wanted, folder: Path | None, repo: str, dtype,
           in_file: Callable[[str], object] = lambda sub: None) -> tuple[dict, list[str]]:
    """{sub: component or None} for every part, and the wanted subs found nowhere: each comes from
    the file itself (`in_file`), else the folder, else the hub cache."""
    found, missing = {}, []
    for sub, part in parts.items():
        if sub not in wanted:
            found[sub] = None
            continue
        model = in_file(sub)
        if model is None and folder is not None:
            model = from_folder(folder, sub, part, dtype)
        if model is None:
            model = from_hub_cache(repo, sub, part, dtype)
        if model is None:
            missing.append(sub)
        found[sub] = model
    return found, missing


def transformer_state(ckpt, prefix: str, heads: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The transformer's tensors of a single file, without `prefix` when the file nests them under it
    (ComfyUI's repacks: `model.diffusion_model.`), else those under the top-level `heads` its authors
    ship (a file that also bundles a VAE or text encoders keeps them out)."""
    if any(k.startswith(prefix) for k in ckpt.shapes):
        return {k[len(prefix):]: v for k, v in ckpt.read([prefix]).items()}
    return ckpt.read(list(heads))


def flow_scheduler(config_dir: Path):
    import diffusers

    return diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(str(config_dir), subfolder="scheduler")


def write_original(state: Mapping[str, torch.Tensor], path, *, architecture: str, implementation: str,
                   dtype=None, metadata: dict | None = None) -> Path:
    """An original-layout state dict as one safetensors file with SAI's model-spec header, atomically."""
    from ...formats.st_io import serialize, write_bytes_atomic

    out = dict(state)
    if dtype is not None:
        out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    out = {k: v.detach().cpu().contiguous() for k, v in out.items()}
    path = Path(path)
    header = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture,
              "modelspec.implementation": implementation, "modelspec.title": path.stem,
              **{str(k): str(v) for k, v in (metadata or {}).items()}}
    write_bytes_atomic(path, serialize(out, header))
    return path
