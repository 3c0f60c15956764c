"""A GGUF base model file (city96's Flux / SD 3.5 / Chroma conversions, as ComfyUI-GGUF and Forge
users have them), read one tensor at a time.

The names are the original layout's without `model.diffusion_model.` (BFL's for Flux, SAI's for
SD3: city96's tools/convert.py keeps them), so the families' single-file loaders read these files
as they read safetensors ones. A quantized tensor (Q8_0, Q4_K...) comes back as diffusers'
`GGUFParameter` (the raw blocks, one row of them per weight row, with its quant type), which
diffusers' `GGUFLinear` dequantizes layer by layer; F32/F16 tensors come back plain.

Reading: the `gguf` package parses the header; each tensor's bytes are then read with pread(2)
from the offset it gives, so no page of the file stays mapped (GGUFReader's memmap would keep
every page read resident in the process's memory, as safe_open's map does).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import LoraKitError

PLAIN = {"F32": torch.float32, "F16": torch.float16}


class GGUFFile:
    def __init__(self, path: Path):
        try:
            from gguf import GGUFReader
        except ImportError as e:
            raise LoraKitError("reading a GGUF file needs the gguf package: pip install gguf", path) from e
        self.path = Path(path)
        try:
            reader = GGUFReader(str(self.path))
        except Exception as e:  # noqa: BLE001 - the reader raises several error types on bad files
            raise LoraKitError(f"not a readable GGUF file (truncated or corrupt?): {e}", self.path) from e
        # name → (logical torch shape, quant type, offset, bytes, stored numpy shape)
        self._index = {t.name: (tuple(int(n) for n in reversed(t.shape.tolist())), t.tensor_type, int(t.data_offset),
                                int(t.n_bytes), tuple(t.data.shape)) for t in reader.tensors}
        self.metadata = {}
        arch = reader.fields.get("general.architecture")
        if arch is not None:
            self.metadata["general.architecture"] = bytes(arch.parts[arch.data[0]]).decode("utf-8", "replace")
        del reader  # drops the memmap
        self.shapes = {k: v[0] for k, v in self._index.items()}
        self.dtypes = {k: "GGUF_" + v[1].name for k, v in self._index.items()}

    def get(self, key: str) -> torch.Tensor:
        import numpy as np

        shape, qtype, offset, n_bytes, stored = self._index[key]
        with open(self.path, "rb") as f:
            raw = os.pread(f.fileno(), n_bytes, offset)
        if len(raw) != n_bytes:
            raise LoraKitError(f"tensor {key} is cut short (truncated file?)", self.path)
        if qtype.name in PLAIN:
            kind = {"F32": "<f4", "F16": "<f2"}[qtype.name]
            return torch.from_numpy(np.frombuffer(raw, dtype=kind).copy()).reshape(shape)
        from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter

        if qtype not in SUPPORTED_GGUF_QUANT_TYPES:
            raise LoraKitError(f"tensor {key} is in GGUF type {qtype.name}, which diffusers cannot dequantize",
                               self.path)
        data = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy()).reshape(stored)
        return GGUFParameter(data, quant_type=qtype)

    def close(self) -> None:
        pass
