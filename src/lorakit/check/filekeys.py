"""A LoRA file as the loaders see it: every key, its shape, the alphas, and the modules
("stems") that its keys group into under the union of the adapter suffixes the loaders know.

The check must read damaged files too (a dropped alpha, a lone key), so nothing here rejects a
name: each tool decides for itself what it does with every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

# suffix → role; the longest suffix that a key ends with wins (`.lora_A.default.weight` before `.lora_A`)
SUFFIXES: dict[str, str] = {
    ".lora_up.weight": "up", ".lora_down.weight": "down", ".lora_mid.weight": "mid",
    ".lora_B.weight": "up", ".lora_A.weight": "down", ".lora_B.default.weight": "up", ".lora_A.default.weight": "down",
    ".lora.up.weight": "up", ".lora.down.weight": "down", "_lora.up.weight": "up", "_lora.down.weight": "down",
    ".lora_linear_layer.up.weight": "up", ".lora_linear_layer.down.weight": "down",
    ".lora_B": "up", ".lora_A": "down",
    ".alpha": "alpha", ".dora_scale": "dora", ".lora_magnitude_vector": "dora", ".lora_magnitude_vector.weight": "dora",
    ".hada_w1_a": "hada", ".hada_w1_b": "hada", ".hada_w2_a": "hada", ".hada_w2_b": "hada", ".hada_t1": "hada",
    ".hada_t2": "hada",
    ".lokr_w1": "lokr", ".lokr_w2": "lokr", ".lokr_w1_a": "lokr", ".lokr_w1_b": "lokr", ".lokr_w2_a": "lokr",
    ".lokr_w2_b": "lokr", ".lokr_t2": "lokr",
    ".diff": "diff", ".diff_b": "diff", ".set_weight": "diff",
}
_BY_LENGTH = sorted(SUFFIXES, key=len, reverse=True)
WEIGHT_ROLES = frozenset({"up", "down", "hada", "lokr", "diff"})


def split_key(key: str) -> tuple[str, str]:
    """(stem, suffix) of a key; ("key", "") when no adapter suffix ends it."""
    for suffix in _BY_LENGTH:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], suffix
    return key, ""


@dataclass
class FileKeys:
    path: str
    shapes: dict[str, tuple[int, ...]]
    alphas: dict[str, float]  # key → value of every `.alpha` key
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return list(self.shapes)

    def stems(self) -> dict[str, dict[str, str]]:
        """{stem: {suffix: key}} for every key (a key with no known suffix is its own stem, suffix "")."""
        out: dict[str, dict[str, str]] = {}
        for key in self.shapes:
            stem, suffix = split_key(key)
            out.setdefault(stem, {})[suffix] = key
        return out

    def modules(self) -> dict[str, dict[str, str]]:
        """The stems that carry weights: the file's modules, as lorakit counts them."""
        return {s: k for s, k in self.stems().items() if any(SUFFIXES.get(x) in WEIGHT_ROLES for x in k)}

    def tensor(self, key: str):
        """One tensor of the file, read on demand."""
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            return f.get_tensor(key)

    def rank(self, keys: Mapping[str, str]) -> int | None:
        """Rank of a module from its down (or LoHa w1_b) factor; None for full or unknown kinds."""
        for suffix in keys:
            if SUFFIXES.get(suffix) == "down" or suffix == ".hada_w1_b":
                shape = self.shapes[keys[suffix]]
                return shape[0] if shape else None
        return None


def read(path: str | Path) -> FileKeys:
    """Names, shapes, alphas and metadata of a .safetensors LoRA; a LoraKitError (one line naming
    the file) when it cannot be read."""
    from ..errors import LoraKitError
    from ..formats.st_io import read_safetensors

    p = Path(path)
    if p.is_dir():
        raise LoraKitError("is a folder: check takes a .safetensors LoRA file", p)
    if not p.exists():
        raise LoraKitError("no such file", p)
    state, metadata = read_safetensors(p)
    if not state:
        raise LoraKitError("holds no tensors", p)
    alphas = {}
    for key, t in state.items():
        if key.endswith(".alpha") and t.numel() == 1:
            alphas[key] = float(t.float().item())
    return FileKeys(str(p), {k: tuple(v.shape) for k, v in state.items()}, alphas, dict(metadata or {}))
