"""Which files the page may touch: only those under the folders the server was started with
(`--lora-dir`, `--data-dir`, `--out-dir`) or that Settings added.

The page is a file browser in disguise: every text field that names a path is a way to read or
overwrite any file the server's user can. So each path is resolved (symlinks followed, `..`
folded) and must land inside one of the allowed folders; anything else is refused with a message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from ..errors import LoraKitError

# what a hub repository id looks like (`org/name`); such ids are not paths, so no folder check applies
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PathGuard:
    def __init__(self, folders: Iterable[str | os.PathLike] = ()):
        self.folders: list[Path] = []
        for folder in folders:
            self.allow(folder)

    def allow(self, folder: str | os.PathLike) -> Path:
        """Add an existing folder (resolved) to the allowed ones."""
        path = Path(str(folder).strip()).expanduser()
        if not str(folder).strip():
            raise LoraKitError("empty folder name")
        path = path.resolve()
        if not path.is_dir():
            raise LoraKitError("not an existing folder", path)
        if path not in self.folders:
            self.folders.append(path)
        return path

    def inside(self, path: Path) -> bool:
        return any(path == f or path.is_relative_to(f) for f in self.folders)

    def check(self, value: str | os.PathLike | None, what: str, *, base: Path | None = None, exists: bool = False,
              kind: str | None = None) -> Path:
        """VALUE as a resolved path inside an allowed folder, or a LoraKitError naming WHAT.

        Relative paths are taken from `base` (the folder the field is about; default the first
        allowed folder), never from the server's working directory. `exists` requires the path to
        be there; `kind` ("file" or "dir") requires that kind."""
        text = str(value or "").strip()
        if not text:
            raise LoraKitError(f"{what}: choose a path")
        if "\x00" in text:
            raise LoraKitError(f"{what}: the path contains a NUL character")
        if not self.folders:
            raise LoraKitError(f"{what}: this page has no folders to work in; start it with --lora-dir or "
                               "--data-dir, or add one in Settings")
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = (base or self.folders[0]) / path
        try:
            path = path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise LoraKitError(f"{what}: cannot resolve the path ({exc.__class__.__name__})", text) from None
        if not self.inside(path):
            raise LoraKitError(f"{what}: outside the folders this page may use ({self.listing()}); "
                               "add its folder with --data-dir or in Settings", text)
        if exists and not path.exists():
            raise LoraKitError(f"{what}: no such file or folder", path)
        if kind == "file" and path.exists() and not path.is_file():
            raise LoraKitError(f"{what}: is a folder, not a file", path)
        if kind == "dir" and path.exists() and not path.is_dir():
            raise LoraKitError(f"{what}: is a file, not a folder", path)
        return path

    def model(self, value: str | None, what: str = "base model") -> str:
        """A base model field: `toy`, a hub id (`org/name`, not a local path), or a guarded path."""
        text = str(value or "").strip()
        if not text:
            raise LoraKitError(f"{what}: choose a model ('toy', a hub id, or a folder or file under your folders)")
        found = next((f / text for f in self.folders if (f / text).exists()), None)  # a name in one of the folders
        if text == "toy" or (_HUB_ID.match(text) and ".." not in text and found is None
                             and not Path(text).expanduser().exists()):
            return text
        return str(self.check(found or text, what, exists=True))

    def listing(self) -> str:
        return ", ".join(str(f) for f in self.folders) or "none"
