"""What the whole page shares: its folders (and the path guard over them), the LoRA library,
the recently used models. One per server: the page is one person's workbench."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from ..errors import LoraKitError
from .guard import PathGuard
from .library import Library, LoraCard

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Studio:
    def __init__(self, lora_dirs: Iterable[str | os.PathLike] = (), data_dirs: Iterable[str | os.PathLike] = (),
                 out_dir: str | os.PathLike | None = None, default_model: str = "toy",
                 recent_file: str | os.PathLike | None = None, locked: bool = False):
        self.guard = PathGuard()
        self.lora_dirs = [self.guard.allow(d) for d in lora_dirs]
        self.data_dirs = [self.guard.allow(d) for d in data_dirs]
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.out_dir = self.guard.allow(out_dir) if out_dir is not None else None
        self.locked = locked  # Settings may not widen the folders (a page reachable from other machines)
        self.library = Library()
        self.recent_file = Path(recent_file) if recent_file else None
        self.recent = self._read_recent()
        self.default_model = default_model
        self.remember_model(default_model)

    # folders ---------------------------------------------------------------------------------------
    def add_folders(self, lora_lines: str, data_lines: str) -> str:
        """Settings: add folders to the library and to the data folders (existing folders only)."""
        wanted = [(d, "library") for d in (lora_lines or "").splitlines() if d.strip()]
        wanted += [(d, "data") for d in (data_lines or "").splitlines() if d.strip()]
        if self.locked and any(Path(d.strip()).expanduser().resolve() not in self.guard.folders for d, _ in wanted):
            raise LoraKitError("the folder list is fixed on a page served beyond this machine (--host); "
                               "restart with --lora-dir / --data-dir to change it")
        for d, kind in wanted:
            path = self.guard.allow(d.strip())
            target = self.lora_dirs if kind == "library" else self.data_dirs
            if path not in target:
                target.append(path)
        return self.folders_text()

    def add_library_folder(self, folder: Path) -> None:
        """A folder already allowed (e.g. where a training run wrote its LoRA) joins the library."""
        folder = self.guard.check(folder, "library folder", kind="dir")
        if folder not in self.lora_dirs:
            self.lora_dirs.append(folder)

    def folders_text(self) -> str:
        rows = [f"- library: `{d}`" for d in self.lora_dirs] + [f"- data: `{d}`" for d in self.data_dirs]
        if self.out_dir:
            rows.append(f"- outputs: `{self.out_dir}`")
        return "\n".join(rows) or "no folders yet"

    def first(self, kind: str) -> Path | None:
        folders = {"lora": self.lora_dirs, "data": self.data_dirs}[kind]
        return folders[0] if folders else (self.out_dir or (self.guard.folders[0] if self.guard.folders else None))

    # the library -----------------------------------------------------------------------------------
    def cards(self) -> list[LoraCard]:
        return self.library.scan(self.lora_dirs)

    def card(self, name_or_path: str) -> LoraCard:
        cards = self.cards()
        for c in cards:
            if c.name == name_or_path or str(c.path) == name_or_path:
                return c
        raise LoraKitError(f"no LoRA named {name_or_path!r} in the library ({len(cards)} files under "
                           f"{', '.join(str(d) for d in self.lora_dirs) or 'no folders'})")

    def lora_choices(self) -> list[str]:
        return [str(c.path) for c in self.cards() if not c.error]

    # models ----------------------------------------------------------------------------------------
    def _read_recent(self) -> list[str]:
        try:
            data = json.loads(self.recent_file.read_text(encoding="utf-8")) if self.recent_file else []
        except (OSError, json.JSONDecodeError):
            data = []
        return [str(m) for m in data if isinstance(m, str)]

    def remember_model(self, spec: str) -> None:
        spec = (spec or "").strip()
        if not spec:
            return
        self.recent = [spec] + [m for m in self.recent if m != spec][:9]
        if self.recent_file:
            from ..formats.st_io import write_bytes_atomic

            try:
                self.recent_file.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(self.recent_file, json.dumps(self.recent).encode("utf-8"))
            except OSError:
                pass  # a read-only home only loses the list

    def model_choices(self) -> list[str]:
        """`toy` first, then the recent models."""
        return ["toy"] + [m for m in self.recent if m != "toy"]
