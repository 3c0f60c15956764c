"""Cached tensors (VAE latents, text embeddings) in memory or on disk, keyed by what made them.

The key names the inputs (file, size, mtime, bucket, flip, model), so a changed image or model
never reuses a stale entry. Disk entries are written to a temporary name and renamed, so an
interrupted run leaves no half-written file behind.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_path

MODES = ("memory", "disk", "none")


def cache_key(*parts) -> str:
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()


class TensorStore:
    """get/put of small tensor dicts; `memory` keeps at most `max_items` (least recently used go)."""

    def __init__(self, mode: str = "memory", directory: Path | None = None, max_items: int | None = None):
        if mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}, not {mode!r}")
        if mode == "disk" and directory is None:
            raise ValueError("a disk cache needs a directory")
        self.mode = mode
        self.dir = Path(directory) if directory else None
        self.max_items = max_items
        self._mem: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.mode == "memory":
            hit = self._mem.get(key)
            if hit is not None:
                self._mem.move_to_end(key)
            return hit
        if self.mode == "disk":
            p = self._path(key)
            if p.is_file():
                try:
                    return load_file(p)
                except Exception:  # a damaged entry is recomputed, not fatal
                    return None
        return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        if self.mode == "memory":
            self._mem[key] = tensors
            if self.max_items and len(self._mem) > self.max_items:
                self._mem.popitem(last=False)
        elif self.mode == "disk":
            with atomic_path(self._path(key)) as tmp:
                save_file(tensors, tmp)

    def __contains__(self, key: str) -> bool:
        return key in self._mem if self.mode == "memory" else (self.mode == "disk" and self._path(key).is_file())

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"
