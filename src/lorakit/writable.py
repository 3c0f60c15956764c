"""Check, before the work, that a result can be written where the user asked.

A read-only folder or a file standing where a folder should be is otherwise found after minutes of
loading and computing; the atomic writers still catch what this cannot foresee (a full disk).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import LoraKitError


def require_writable(target: str | os.PathLike, *, folder: bool = False) -> None:
    """`target` (a file to create or replace, or with `folder` a folder to create or fill) can be
    written: its nearest existing ancestor is a folder this process may write into."""
    path = Path(target)
    if path.exists() and not folder and path.is_dir():
        raise LoraKitError("is a folder, not a file", path)
    probe = path if folder and path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise LoraKitError(f"cannot write here: {probe} is a file, not a folder", path)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LoraKitError(f"cannot write here: {probe} is read-only", path)
