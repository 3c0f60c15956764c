"""Facts about kohya-named modules ({name: {subkey: tensor}}) that every format needs."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping

from torch import Tensor

from ..lora import functional as LF

Modules = Mapping[str, Mapping[str, Tensor]]

LYCORIS_KINDS = ("loha", "lokr", "full", "oft")


def kind_of(tensors: Mapping[str, Tensor]) -> str:
    """lora, loha, lokr, full, oft or unknown (Tucker and DoRA are LoRA with extra tensors)."""
    return LF.module_kind(tensors)


def algo_of(tensors: Mapping[str, Tensor]) -> str:
    """kohya/LyCORIS' name for what a module is: lora, locon (Tucker), loha, lokr, full, oft; +dora."""
    kind = kind_of(tensors)
    if kind == "lora" and "lora_mid.weight" in tensors:
        kind = "locon"
    return kind


def is_lycoris(tensors: Mapping[str, Tensor]) -> bool:
    """Whether only LyCORIS-aware loaders can read the module (anything but plain LoRA)."""
    return algo_of(tensors) != "lora" or "dora_scale" in tensors


def rank_of(tensors: Mapping[str, Tensor]) -> int | None:
    t = tensors
    kind = kind_of(t)
    if kind == "lora":
        return int(t["lora_down.weight"].shape[0])
    if kind == "loha":
        return int(t["hada_w1_b"].shape[0])
    if kind == "lokr":
        for key in ("lokr_w2_b", "lokr_w1_b"):
            if key in t:
                return int(t[key].shape[0])
    if kind == "oft":  # its block size, what LyCORIS takes as its dim
        return int(t["oft_blocks"].shape[1]) if t["oft_blocks"].dim() == 3 else None
    return None


def alpha_of(tensors: Mapping[str, Tensor]) -> float | None:
    a = tensors.get("alpha")
    return None if a is None else float(a)


def is_conv_kxk(tensors: Mapping[str, Tensor]) -> bool:
    """Whether the module adapts a kxk convolution (kohya's `conv_dim` modules)."""
    t = tensors
    if "lora_mid.weight" in t or "hada_t1" in t or "lokr_t2" in t:
        return True
    for key in ("lora_down.weight", "hada_w1_b", "lokr_w2", "lokr_w2_b"):
        w = t.get(key)
        if w is not None and w.dim() == 4 and tuple(w.shape[2:]) != (1, 1):
            return True
    return False


def in_features(tensors: Mapping[str, Tensor]) -> int | None:
    """Input width of the adapted layer, where the tensors tell it without the model."""
    t = tensors
    kind = kind_of(t)

    def width(key: str) -> int:
        shape = t[key].shape
        return int(shape[1]) if len(shape) > 1 else 0  # a malformed factor tells nothing

    if kind == "lora":
        return width("lora_down.weight") or None
    if kind == "loha" and "hada_t1" not in t:
        return width("hada_w1_b") or None
    if kind == "lokr":
        w1 = width("lokr_w1") if "lokr_w1" in t else width("lokr_w1_b")
        w2 = width("lokr_w2") if "lokr_w2" in t else width("lokr_w2_b")
        return w1 * w2 or None
    return None


class Shaped:
    """A tensor's stand-in that has only its shape: what detection reads from a file's header."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def dim(self) -> int:
        return len(self.shape)


def most_common(values: Iterable):
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None
