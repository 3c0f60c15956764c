"""Facts about kohya-named modules ({name: {subkey: tensor}}) that every format needs."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping

from torch import Tensor

from ..lora import functional as LF

Modules = Mapping[str, Mapping[str, Tensor]]

LYCORIS_KINDS = ("loha", "lokr", "full")


def kind_of(tensors: Mapping[str, Tensor]) -> str:
    """lora, loha, lokr, full or unknown (Tucker and DoRA are LoRA with extra tensors)."""
    return LF.module_kind(tensors)


def algo_of(tensors: Mapping[str, Tensor]) -> str:
    """kohya/LyCORIS' name for what a module is: lora, locon (Tucker), loha, lokr, full; +dora."""
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
    if kind == "lora":
        return int(t["lora_down.weight"].shape[1])
    if kind == "loha" and "hada_t1" not in t:
        return int(t["hada_w1_b"].shape[1])
    if kind == "lokr":
        w1 = t["lokr_w1"].shape[1] if "lokr_w1" in t else t["lokr_w1_b"].shape[1]
        w2 = t["lokr_w2"].shape[1] if "lokr_w2" in t else t["lokr_w2_b"].shape[1]
        return int(w1 * w2)
    return None


def most_common(values: Iterable):
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None
