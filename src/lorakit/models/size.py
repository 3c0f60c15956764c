"""How large a model's denoiser is, known before its weights are read (for the choice of precision)."""

from __future__ import annotations

import json
from pathlib import Path


def denoiser_parameters(spec: str) -> int | None:
    """Parameters of the denoiser in a diffusers folder (or the toy), built from its config on the
    meta device: no weights are read. None where no config is at hand without loading (single
    files, hub ids): the caller counts the loaded model instead."""
    import torch

    from .. import families
    from ..precision import count_parameters

    path = _path(spec)
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    for family in families.all():
        entry = index.get(family.denoiser)
        if isinstance(entry, list) and len(entry) == 2 and (path / family.denoiser / "config.json").is_file():
            break
    else:
        return None
    import diffusers

    cls = getattr(diffusers, str(entry[1]), None)
    if cls is None:
        return None
    try:
        config = json.loads((path / family.denoiser / "config.json").read_text())
        with torch.device("meta"):
            return count_parameters(cls.from_config(config))
    except Exception:  # an odd config: the loaded model is counted instead (the loader names real errors)
        return None


def weight_count(spec: str) -> int | None:
    """Numbers in all of a model's weights (every part), from the safetensors headers alone: a single
    file, or a diffusers folder (per part, the largest variant: `.fp16` copies are not counted twice).
    None where no such file is at hand (hub ids, pickles): the caller then cannot check memory. Parts
    read from elsewhere (`--text-encoders`) are not counted."""
    import re

    from safetensors import safe_open

    path = _path(spec)

    def count(file: Path) -> int:
        with safe_open(str(file), framework="pt") as f:
            total = 0
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
            return total

    try:
        if path.is_file():
            return count(path) if path.suffix == ".safetensors" else None
        if not (path / "model_index.json").is_file():
            return None
        total = 0
        for part in sorted(p for p in path.iterdir() if p.is_dir()):
            variants: dict[str, int] = {}
            for file in part.glob("*.safetensors"):
                variant = re.sub(r"-\d+-of-\d+$", "", file.stem)  # shards of one variant add up
                variants[variant] = variants.get(variant, 0) + count(file)
            total += max(variants.values(), default=0)
        return total or None
    except (OSError, ValueError, RuntimeError):  # an unreadable header: loading names the real error
        return None


def _path(spec: str) -> Path:
    if spec == "toy":
        from .loader import _toy_path

        return _toy_path()
    return Path(spec)
