"""The kohya / LyCORIS key layout: `NAME.SUBKEY` with NAME = `lora_{unet,te,te1,te2}_<path>`.

LyCORIS (LoHa, LoKr, Tucker, DoRA) files use the same names and the same `alpha`, only other
sub-keys, so one reader serves both; validation is strict: a key that is not understood is an
error, never skipped.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .. import kohya_names as names
from ..errors import LoraKitError
from ..lora import functional as LF
from .modules import Modules, kind_of

_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")
_ALL_SUBKEYS = set().union(*LF.KNOWN_SUBKEYS.values())
_PARTNERS = {"lora_down.weight": "lora_up.weight", "lora_up.weight": "lora_down.weight",
             "hada_w1_a": "hada_w1_b", "hada_w1_b": "hada_w1_a", "hada_w2_a": "hada_w2_b",
             "hada_w2_b": "hada_w2_a", "lokr_w1_a": "lokr_w1_b", "lokr_w1_b": "lokr_w1_a",
             "lokr_w2_a": "lokr_w2_b", "lokr_w2_b": "lokr_w2_a"}


def is_kohya_key(key: str) -> bool:
    return key.startswith(_PREFIXES) and "." in key


def _listing(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def group(state: Mapping[str, Tensor], source: str | None = None) -> dict[str, dict[str, Tensor]]:
    """Flat kohya/LyCORIS keys → {module name: {subkey: tensor}}, every key accounted for."""
    modules: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        if not is_kohya_key(key):
            unknown.append(key)
            continue
        name, sub = names.split_module_key(key)
        if sub not in _ALL_SUBKEYS:
            unknown.append(key)
            continue
        modules.setdefault(name, {})[sub] = value
    if unknown:
        raise LoraKitError(f"{len(unknown)} unknown key(s): {_listing(unknown)}", source)
    for name, tensors in modules.items():
        validate_module(name, tensors, source)
    return modules


def validate_module(name: str, t: Mapping[str, Tensor], source: str | None = None) -> None:
    """Complete (every factor has its partner) and self-consistent shapes; the model checks the rest."""
    kind = kind_of(t)
    if kind == "unknown":
        for key, partner in _PARTNERS.items():
            if key in t and partner not in t:
                raise LoraKitError(f"module {name} has {key} but no {partner}", source)
        raise LoraKitError(f"module {name} has keys {sorted(t)} that form no known adapter", source)
    extra = set(t) - LF.KNOWN_SUBKEYS[kind]
    if "diff_b" in t:
        extra.add("diff_b")  # bias updates are not applied by lorakit: refuse rather than drop
    if extra:
        raise LoraKitError(f"module {name} ({kind}) has keys that do not belong to it: {sorted(extra)}", source)
    check_values(name, t, source)
    alpha = t.get("alpha")
    if alpha is not None and alpha.numel() != 1:
        raise LoraKitError(f"module {name}: alpha has shape {tuple(alpha.shape)}, expected a scalar", source)
    if kind == "lora":
        down, up, mid = t["lora_down.weight"], t["lora_up.weight"], t.get("lora_mid.weight")
        rank_up = up.reshape(up.shape[0], -1).shape[1] if up.dim() >= 2 else -1
        if down.dim() not in (2, 4) or up.dim() not in (2, 4) or down.shape[0] < 1:
            raise LoraKitError(f"module {name}: lora_down {tuple(down.shape)} / lora_up {tuple(up.shape)} are "
                               "not the factors of a Linear or Conv2d update of rank ≥ 1", source)
        if mid is not None:
            ok = down.dim() >= 2 and mid.dim() == 4 and mid.shape[0] == rank_up and mid.shape[1] == down.shape[0]
        else:
            ok = down.dim() >= 2 and rank_up == down.shape[0] and (up.dim() == 2 or up.shape[2:].numel() == 1)
        if not ok:
            mid_s = f", lora_mid {tuple(mid.shape)}" if mid is not None else ""
            raise LoraKitError(f"module {name}: lora_up {tuple(up.shape)} does not match lora_down "
                               f"{tuple(down.shape)}{mid_s} (rank mismatch)", source)
    elif kind == "loha" and "hada_t1" not in t:
        for a, b in (("hada_w1_a", "hada_w1_b"), ("hada_w2_a", "hada_w2_b")):
            if t[a].dim() != 2 or t[a].shape[1] != t[b].shape[0]:
                raise LoraKitError(f"module {name}: {a} {tuple(t[a].shape)} does not match {b} "
                                   f"{tuple(t[b].shape)}", source)
    elif kind == "oft":
        blocks = t["oft_blocks"]
        if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
            raise LoraKitError(f"module {name}: oft_blocks {tuple(blocks.shape)} are not square blocks "
                               "[blocks, size, size]", source)
    elif kind == "lokr":
        for a, b in (("lokr_w1_a", "lokr_w1_b"), ("lokr_w2_a", "lokr_w2_b")):
            if a in t and "lokr_t2" not in t and t[a].shape[1] != t[b].shape[0]:
                raise LoraKitError(f"module {name}: {a} {tuple(t[a].shape)} does not match {b} "
                                   f"{tuple(t[b].shape)}", source)


def check_values(name: str, t: Mapping[str, Tensor], source: str | None = None) -> None:
    """Every tensor floating point, non-empty and finite: a NaN or Inf would poison every weight it
    is merged into, and an integer or empty one is no adapter at all."""
    for sub, v in t.items():
        if not v.is_floating_point():
            raise LoraKitError(f"module {name}: {sub} is {str(v.dtype).replace('torch.', '')}, not floating point",
                               source)
        if v.numel() == 0:
            raise LoraKitError(f"module {name}: {sub} is empty (shape {tuple(v.shape)})", source)
        bad = count_non_finite(v)
        if bad:
            raise LoraKitError(f"module {name}: {sub} holds {bad} NaN/Inf value(s): the file is corrupt "
                               "(or training diverged)", source)


def count_non_finite(v: Tensor) -> int:
    """How many NaN/Inf values `v` holds. A sum first: NaN and Inf survive it, and it is a vectorized
    pass (CPU isfinite is not: 30× slower on fp16). Only a non-finite sum, which large finite
    values can also give, pays for the exact count."""
    if v.element_size() == 1:
        v = v.float()  # fp8 has no sum/isfinite kernels everywhere
    if bool(torch.isfinite(v.sum())):
        return 0
    return int((~torch.isfinite(v)).sum())


def flatten(modules: Modules, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """{name: {subkey: t}} → flat kohya keys. alpha is written as a 0-dim fp32 whatever `dtype`:
    kohya casts it to the save dtype, but fp16 cannot hold every alpha (0.3, 1e-3…) exactly and
    A1111, ComfyUI and diffusers all read it with `.item()`."""
    out: dict[str, Tensor] = {}
    for name, tensors in modules.items():
        for sub, t in tensors.items():
            t = t.detach().cpu()
            if sub == "alpha":
                t = t.reshape(()).float()
            elif dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[f"{name}.{sub}"] = t.contiguous()
    return out
