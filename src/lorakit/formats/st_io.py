"""Reading and writing safetensors files with errors a user can act on.

The header is checked by hand before safetensors parses it, so that an empty, truncated or
foreign file is reported as such (naming the file), not as a library panic.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from ..atomic import file_mode, write_bytes_atomic  # noqa: F401 (re-exported)
from ..errors import LoraKitError
from ..pickles import PICKLE_SUFFIXES

_MAX_HEADER = 100 * 1024 * 1024


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (the CLI prints errors as one line)."""
    return " ".join(str(exc).split())[:300]


def read_header(path: str | os.PathLike, check_data: bool = True) -> tuple[dict, int]:
    """The parsed JSON header (tensors + `__metadata__`) and its length in bytes, validated.
    `check_data=False` skips comparing the tensors' offsets with the file size (a listing that
    only shows the header's facts need not refuse a file whose data is cut short)."""
    path = Path(path)
    if not path.exists():
        raise LoraKitError("no such file", path)
    if path.is_dir():
        raise LoraKitError("is a folder, not a safetensors file (a PEFT adapter folder needs adapter_config.json)",
                           path)
    size = path.stat().st_size
    if size == 0:
        raise LoraKitError("empty file", path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LoraKitError(f"not a safetensors file ({size} bytes, too short for a header)", path)
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER:
            raise LoraKitError("not a safetensors file (no valid header length)", path)
        if n > size - 8:
            raise LoraKitError(f"truncated or corrupt: header says {n} bytes, the file has {size - 8} after "
                               f"the length field", path)
        raw = f.read(n)
    if raw[:1] != b"{":
        raise LoraKitError("not a safetensors file (the header is not JSON)", path)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nesting bombs
        raise LoraKitError(f"corrupt safetensors header ({exc.__class__.__name__}: {one_line(exc)[:120]})",
                           path) from None
    if not isinstance(header, dict):
        raise LoraKitError("corrupt safetensors header (not a JSON object)", path)
    if not check_data:
        return header, n
    data_len = size - 8 - n
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise LoraKitError(f"corrupt safetensors header (entry {key!r} has no data offsets)", path) from None
    if end > data_len:
        raise LoraKitError(f"truncated: tensors need {end} bytes of data, the file has {data_len}", path)
    return header, n


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    header, _ = read_header(path)
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors (on CPU) and the string metadata of a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header, _ = read_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise LoraKitError(f"unreadable safetensors file ({one_line(exc)})", path) from None
    meta = header.get("__metadata__") or {}
    return tensors, {str(k): str(v) for k, v in meta.items()}


def refuse_pickle(path: str | os.PathLike, allow_pickle: bool) -> None:
    """Pickles can run code when loaded: a LoraKitError unless the user opted in (`--allow-pickle`)."""
    if not allow_pickle:
        raise LoraKitError(f"{Path(path).suffix or 'this'} files are pickles that can run code when loaded: refused "
                           "(convert it to .safetensors, or pass --allow-pickle if you trust its source)", path)


def load_pickle(path: str | os.PathLike):
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary objects."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad or non-weights pickle
        raise LoraKitError(f"unreadable torch file, or one that holds more than weights "
                           f"({exc.__class__.__name__}: {one_line(exc)[:160]})", path) from None


def read_pickle(path: str | os.PathLike) -> dict[str, Tensor]:
    """A torch pickle's flat tensor dict, loaded with weights_only (only when the caller allowed pickles)."""
    obj = load_pickle(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise LoraKitError("the torch file does not hold a flat dict of tensors", path)
    return dict(obj)


def _prepare(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous, and no two entries sharing memory (safetensors refuses shared tensors)."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().to("cpu").contiguous()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        if ptr is not None and ptr in seen or (v.numel() and v.untyped_storage().nbytes() != v.nbytes):
            v = v.clone()
        if ptr is not None:
            seen.add(ptr)
        out[k] = v
    return out


def serialize(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save(_prepare(tensors), metadata=None if metadata is None else dict(metadata))


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Tensor],
                      metadata: Mapping[str, str] | None = None) -> None:
    write_bytes_atomic(path, serialize(tensors, metadata))
