"""One .safetensors file read one tensor at a time, with only that tensor resident.

What the streamed loads and `lorakit extract` read files through: a 12 GB Flux file read tensor by
tensor never has more than the tensor being placed in memory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import LoraKitError

# safe_open maps the whole file by default, and every page read stays resident (counted in the
# process's RSS) for as long as the map lives. safetensors ≥ 0.7 can read with pread(2) instead;
# with older versions the file is reopened after this many bytes, so reading a 7 GB checkpoint
# keeps at most this much of it mapped.
READ_BUDGET = 256 * 2**20


def data_bytes(path: Path) -> int:
    """Bytes of the tensors in a .safetensors file (all of it after its header), from the header's
    length alone; a file of another kind counts whole."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix.lower() != ".safetensors":
        return size
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return max(0, size - 8 - header)


class TensorFile:
    """One .safetensors file, read one tensor at a time (see READ_BUDGET)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                self.dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise LoraKitError(f"not a readable safetensors file (truncated or corrupt?): {e}", self.path) from e
        self._handle, self._mapped, self._read = None, True, 0

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        try:
            if self._handle is None:
                try:
                    self._handle = safe_open(str(self.path), framework="pt", device="cpu", backend="pread")
                    self._mapped = False
                except TypeError:  # safetensors < 0.7: no backend choice
                    self._handle = safe_open(str(self.path), framework="pt", device="cpu")
                    self._mapped = True
            tensor = self._handle.get_tensor(key)
        except Exception as e:  # noqa: BLE001
            self.close()
            raise LoraKitError(f"cannot read tensor {key} (truncated or corrupt file?): {e}", self.path) from e
        self._read += tensor.numel() * tensor.element_size()
        if self._mapped and self._read >= READ_BUDGET:
            self.close()
        return tensor

    def close(self) -> None:
        self._handle, self._read = None, 0  # dropping the handle unmaps the file
