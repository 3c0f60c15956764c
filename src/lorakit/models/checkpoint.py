"""Reading an original-layout single file: its key index, family, prediction type and tensors.

The header is read first (names, shapes, metadata: no tensor data), so a wrong or truncated file
fails fast with a message naming it, and tensors are then read one model part at a time.
Pickle (`.ckpt`) files can run code when unpickled: they are refused unless the caller opts in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from .. import families
from ..errors import LoraKitError
from ..pickles import PICKLE_SUFFIXES

UNET = "model.diffusion_model."
PART_PREFIXES = {
    "unet": ("model.diffusion_model.",),
    "vae": ("first_stage_model.",),
    "text_encoders": ("cond_stage_model.", "conditioner.embedders."),
}
V_PRED_MARKERS = ("v_pred",)  # ComfyUI's marker tensor for v-prediction checkpoints
_LORA_HINTS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1_a", ".lokr_w1", "lora_unet_")


@dataclass
class Checkpoint:
    """An original-layout file, opened lazily: `shapes` from the header, tensors on demand."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str] = field(default_factory=dict)
    _tensors: dict[str, torch.Tensor] | None = None  # only for pickle files, loaded whole
    dtypes: dict[str, str] = field(default_factory=dict)  # safetensors' names: F32, BF16, F8_E4M3...
    _file: object = field(default=None, repr=False)

    def read(self, prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
        """Every tensor whose name starts with one of `prefixes`."""
        prefixes = tuple(prefixes)
        names = [k for k in self.shapes if k.startswith(prefixes)]
        if self._tensors is not None or self._file is not None:  # a pickle, or a GGUF file: one at a time
            return {k: self.tensor(k) for k in names}
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                return {k: _counted(f.get_tensor(k)) for k in names}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise LoraKitError(f"cannot read tensors (truncated or corrupt file?): {e}", self.path) from e

    def tensor(self, key: str) -> torch.Tensor:
        """One tensor, read alone (pread, nothing else of the file kept): what streamed loads read."""
        if self._tensors is not None:
            return _counted(self._tensors[key])
        if self._file is None:
            from .tensor_file import TensorFile

            self._file = TensorFile(self.path)
        return _counted(self._file.get(key))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.shapes)


def _counted(tensor: torch.Tensor) -> torch.Tensor:
    """Every tensor a single-file load reads passes here: the load's progress counts its bytes."""
    from .. import progress

    progress.read(progress.nbytes(tensor))
    return tensor


def open_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise LoraKitError("no such file", path)
    if not path.is_file():
        raise LoraKitError("not a file", path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return _open_pickle(path, allow_pickle)
    if suffix == ".gguf":
        return _open_gguf(path)
    if suffix != ".safetensors":
        raise LoraKitError("not a checkpoint file: expected .safetensors or .gguf (or .ckpt with --allow-pickle)",
                           path)
    return _open_safetensors(path)


def _open_gguf(path: Path) -> Checkpoint:
    from .gguf_file import GGUFFile

    f = GGUFFile(path)
    return Checkpoint(path, f.shapes, f.metadata, dtypes=f.dtypes, _file=f)


def _open_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        size = path.stat().st_size
        raise LoraKitError(f"not a readable safetensors file ({size} bytes; truncated or corrupt?): {e}", path) from e
    return Checkpoint(path, shapes, metadata, dtypes=dtypes)


def _open_pickle(path: Path, allow_pickle: bool) -> Checkpoint:
    """Only with the user's consent, and even then weights_only: a pickle that needs arbitrary
    classes to load (some Lightning checkpoints) is refused rather than executed."""
    from ..formats.st_io import load_pickle, refuse_pickle

    refuse_pickle(path, allow_pickle)
    data = load_pickle(path)
    while isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise LoraKitError("the pickle holds no state dict", path)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    return Checkpoint(path, {k: tuple(v.shape) for k, v in tensors.items()}, {}, tensors)


def detect_file_family(ckpt: Checkpoint) -> str:
    """The family name from names and shapes (each family weighs its own evidence: lorakit.families);
    a LoraKitError when no family claims the file or the family cannot load this variant of it."""
    keys = ckpt.shapes
    found = families.detect_checkpoint(keys, ckpt.metadata)
    if found is None:
        supported = ", ".join(f.label for f in families.all())
        hint = ""
        if any(h in k for k in keys for h in _LORA_HINTS):
            hint = " (it looks like a LoRA file, not a base model)"
        elif any(k.startswith(("down_blocks.", "unet.", "conv_in.")) for k in keys):
            hint = " (it looks like diffusers-layout weights: give the diffusers folder instead)"
        if ckpt.has(UNET):
            raise LoraKitError(f"a checkpoint of no known family: only {supported} are supported", ckpt.path)
        raise LoraKitError(f"not a Stable Diffusion checkpoint: no {UNET}* tensors{hint}", ckpt.path)
    found.check_checkpoint(ckpt)
    return found.name


def declared_prediction_type(ckpt: Checkpoint) -> str | None:
    """What the file itself declares: kohya/SAI `modelspec.prediction_type` metadata or ComfyUI's
    `v_pred` marker tensor. None when it is silent."""
    meta = {k.lower(): str(v).lower() for k, v in ckpt.metadata.items()}
    value = meta.get("modelspec.prediction_type") or meta.get("prediction_type")
    if value:
        if value.startswith("v"):
            return "v_prediction"
        if value.startswith("eps"):
            return "epsilon"
    if any(m in ckpt.shapes for m in V_PRED_MARKERS):
        return "v_prediction"
    return None


def guessed_prediction_type(ckpt: Checkpoint, family: str) -> str | None:
    """What the weights say when the file declares nothing (SD2: 768-v or 512 base); None when silent."""
    return families.get(family).guess_prediction_type(ckpt)
