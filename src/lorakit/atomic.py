"""Atomic writes: every file and folder lorakit writes appears whole under its name, or not at all.

A file is written to a temporary sibling (same folder, so the rename never crosses file systems),
flushed and fsynced, then `os.replace`d over the target, and the folder is fsynced so that the
rename itself survives a power cut. A folder (a diffusers model, PEFT adapters, a resume state) is
written as a temporary sibling folder, every file in it fsynced, then renamed into place; an older
folder of that name is moved aside first and deleted only once the new one is there.

Written by hand because neither the standard library nor the libraries lorakit writes through
(safetensors, PIL, matplotlib, diffusers, accelerate) write atomically: they open the final name.
A failed write (a full disk, a read-only folder) becomes one LoraKitError naming the file.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LoraKitError

TMP_SUFFIX = ".tmp"


def file_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def write_failure(exc: BaseException, path: str | os.PathLike) -> LoraKitError:
    """One line naming the file being written and why the write failed."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            why = "no space left on device"
        elif exc.errno == errno.EDQUOT:
            why = "disk quota exceeded"
        else:
            why = exc.strerror or str(exc)
    else:  # safetensors' writer reports I/O failures as SafetensorError, torch.save as RuntimeError
        text = " ".join(str(exc).split())
        why = "no space left on device" if "No space left on device" in text else text[:200] + free_space(path)
    return LoraKitError(f"cannot write ({why})", path)


def free_space(path: str | os.PathLike) -> str:
    """', N MiB free on that disk' (a hint when a writer's error does not say why it failed)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return ""
    return f"; {free / 2**20:.1f} MiB free on that disk"


def _is_write_failure(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError"


def _fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # some platforms cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path next to `path` for any writer to fill; on leaving the block it becomes `path`.

    `suffix` is appended to the temporary name for writers that infer the format from it
    (matplotlib). If the block raises, the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    parent = _parent(path)
    if path.is_dir():
        raise LoraKitError("output path is a folder", path)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX + suffix, dir=parent)
        os.close(fd)
    except OSError as exc:
        raise write_failure(exc, path) from None
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _is_write_failure(exc):
            raise write_failure(exc, path) from None
        raise
    _fsync_dir(parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder next to `path` to fill; on leaving the block it replaces `path` whole.

    An existing `path` is renamed to `NAME.old` first and removed only after the new folder is in
    place, so at every instant one complete folder exists under `NAME` or `NAME.old`.
    """
    path = Path(path)
    parent = _parent(path)
    if path.exists() and not path.is_dir():
        raise LoraKitError("exists and is not a folder", path)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=parent))
    except OSError as exc:
        raise write_failure(exc, path) from None
    try:
        yield tmp
        commit_dir(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_failure(exc):
            raise write_failure(exc, final_name(exc, tmp, path)) from None
        raise


def commit_dir(tmp: Path, path: Path) -> None:
    """fsync every file of the finished folder `tmp`, then swap it in as `path` (see atomic_dir)."""
    for root, _, files in os.walk(tmp):
        for f in files:
            _fsync_file(Path(root) / f)
            os.chmod(Path(root) / f, file_mode())  # some writers create 0600 files
        _fsync_dir(root)
    os.chmod(tmp, file_mode(directory=True))
    old = aside(path)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(_parent(path))
    shutil.rmtree(old, ignore_errors=True)


def final_name(exc: BaseException, tmp: Path, path: Path) -> Path:
    """The name a file that failed inside the temporary folder `tmp` would have had under `path`."""
    name = getattr(exc, "filename", None)
    if name and _inside(Path(name), tmp) and Path(name) != tmp:
        return path / Path(name).relative_to(tmp)
    return path


def aside(path: Path) -> Path:
    """Where atomic_dir keeps the previous folder while the new one is renamed in."""
    return path.with_name(path.name + ".old")


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.relative_to(folder)
        return True
    except ValueError:
        return False


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> None:
    """Delete what a killed writer left in `folder`: hidden `.NAME.*.tmp` files and folders (of
    every NAME, or only of `name`). Only for folders no other process is writing to."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if name is not None and not p.name.startswith(f".{name}."):
            continue
        if p.name.startswith(".") and (p.name.endswith(TMP_SUFFIX) or TMP_SUFFIX + "." in p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
