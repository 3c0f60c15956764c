"""Base models: load a diffusers folder, single file, hub id or the toy model; save them back.

Imports are lazy so that `import lorakit.models` stays cheap (no diffusers until first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["BaseModel", "detect_family", "load_model", "save_model"]

_EXPORTS = {"BaseModel": ".base", "detect_family": ".base", "load_model": ".loader", "save_model": ".saver"}

if TYPE_CHECKING:
    from .base import BaseModel, detect_family
    from .loader import load_model
    from .saver import save_model


def __getattr__(name: str):
    if name in _EXPORTS:
        from importlib import import_module

        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
