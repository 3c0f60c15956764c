"""The model hashes A1111 and kohya show for a LoRA: `sshs_model_hash` and `sshs_legacy_hash`.

Computed exactly as kohya's `precalculate_safetensors_hashes` does when it saves: the tensors are
serialized with only the `ss_*` metadata, then
- model hash  = sha256 of the bytes after the 8-byte length and the JSON header
  (sd-webui-additional-networks' `addnet_hash_safetensors`, which A1111 also uses for LoRAs);
  it covers the tensor data only, so editing any metadata keeps it;
- legacy hash = first 8 hex digits of sha256 of bytes 0x100000..0x110000 of that serialization
  (`addnet_hash_legacy`; for a file under 1 MiB that is the hash of no bytes, e3b0c442).
These are a few lines over hashlib; no library exposes them.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import BinaryIO, Mapping

from torch import Tensor

from .st_io import read_header, read_safetensors, serialize

_BLOCK = 1024 * 1024


def addnet_hash_safetensors(b: BinaryIO) -> str:
    h = hashlib.sha256()
    b.seek(0)
    n = int.from_bytes(b.read(8), "little")
    b.seek(n + 8)
    for chunk in iter(lambda: b.read(_BLOCK), b""):
        h.update(chunk)
    return h.hexdigest()


def addnet_hash_legacy(b: BinaryIO) -> str:
    h = hashlib.sha256()
    b.seek(0x100000)
    h.update(b.read(0x10000))
    return h.hexdigest()[0:8]


def precalculate_hashes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """The two hashes kohya stores in a file it is about to write."""
    training = {k: v for k, v in (metadata or {}).items() if k.startswith("ss_")}
    b = io.BytesIO(serialize(tensors, training))
    return {"sshs_model_hash": addnet_hash_safetensors(b), "sshs_legacy_hash": addnet_hash_legacy(b)}


def file_hashes(path: str | os.PathLike) -> dict[str, str]:
    """The hashes of a file as it is on disk: model hash over its data bytes, legacy hash
    recomputed kohya's way from its tensors and `ss_*` metadata."""
    read_header(path)
    with open(path, "rb") as f:
        model = addnet_hash_safetensors(f)
    tensors, metadata = read_safetensors(path)
    legacy = precalculate_hashes(tensors, metadata)["sshs_legacy_hash"]
    return {"sshs_model_hash": model, "sshs_legacy_hash": legacy}
