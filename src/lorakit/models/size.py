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

    if spec == "toy":
        from .loader import _toy_path

        path = _toy_path()
    else:
        path = Path(spec)
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
