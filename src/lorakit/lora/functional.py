"""The tensor math of every adapter kind, free of nn.Module and of any model library.

Each `*_delta` returns the full weight update ΔW (already multiplied by alpha/rank) in the
shape of the adapted layer's weight, so that merging is `W + m·ΔW` whatever the kind. LoRA's
on-the-fly path does not build ΔW (see modules.py); the others do, as A1111 and ComfyUI do.
"""

from __future__ import annotations

import torch
from torch import Tensor


def lora_scale(alpha: float | None, rank: int) -> float:
    """kohya: a missing alpha means alpha = rank (scale 1)."""
    return 1.0 if alpha is None else float(alpha) / float(rank)


def lora_delta(up: Tensor, down: Tensor, alpha: float | None, shape: torch.Size | tuple,
               mid: Tensor | None = None) -> Tensor:
    """ΔW = (alpha/r)·up·down for Linear and Conv2d (kxk down, 1x1 up), Tucker `mid` optional.

    A kxk conv followed by a 1x1 conv is one kxk conv whose weight is up @ down(flattened):
    the down conv carries the layer's stride and padding, so the composition is exact.
    """
    rank = down.shape[0]
    up2 = up.reshape(up.shape[0], -1)
    down2 = down.reshape(rank, -1)
    if mid is not None:
        delta = torch.einsum("n m k l, i n, m j -> i j k l", mid, up2, down2)
    else:
        delta = up2 @ down2
    return (delta * lora_scale(alpha, rank)).reshape(shape)


def _rebuild_tucker(t: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """LyCORIS' CP/Tucker rebuild: t [r, r, k, k], wa [r, out], wb [r, in] → [out, in, k, k]."""
    temp = torch.einsum("i j k l, j r -> i r k l", t, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


def loha_delta(w1a: Tensor, w1b: Tensor, w2a: Tensor, w2b: Tensor, alpha: float | None,
               shape: torch.Size | tuple, t1: Tensor | None = None, t2: Tensor | None = None) -> Tensor:
    """LoHa: ΔW = (w1a·w1b) ⊙ (w2a·w2b) · alpha/r (Hadamard product of two low-rank factors)."""
    rank = w1b.shape[0]
    if t1 is not None and t2 is not None:
        a = _rebuild_tucker(t1, w1a, w1b)
        b = _rebuild_tucker(t2, w2a, w2b)
    else:
        a = w1a @ w1b.reshape(rank, -1)
        b = w2a @ w2b.reshape(w2b.shape[0], -1)
    return (a * b * lora_scale(alpha, rank)).reshape(shape)


def lokr_delta(w1: Tensor | None, w1a: Tensor | None, w1b: Tensor | None,
               w2: Tensor | None, w2a: Tensor | None, w2b: Tensor | None,
               alpha: float | None, shape: torch.Size | tuple, t2: Tensor | None = None) -> Tensor:
    """LoKr: ΔW = kron(w1, w2) · scale, each factor full or low-rank; scale alpha/r only when decomposed."""
    rank = None
    if w1 is None:
        w1 = w1a @ w1b
        rank = w1b.shape[0]
    if w2 is None:
        if t2 is not None:
            w2 = _rebuild_tucker(t2, w2a, w2b)
        else:
            w2 = w2a @ w2b.reshape(w2b.shape[0], -1)
        rank = w2b.shape[0]
    if len(shape) == 4 and w2.dim() == 2:
        w2 = w2.reshape(w2.shape[0], shape[1] // w1.shape[1], *shape[2:])
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    scale = 1.0 if (rank is None or alpha is None) else float(alpha) / rank
    return (torch.kron(w1, w2) * scale).reshape(shape)


def dora_axis(scale_shape: tuple, shape: torch.Size | tuple) -> int:
    """0 when dora_scale holds one magnitude per output row (LyCORIS `wd_on_out`, PEFT), 1 when one
    per input column; decided by its first dimension, as ComfyUI decides."""
    n = torch.Size(scale_shape).numel()
    if scale_shape and scale_shape[0] == shape[0] and n == shape[0]:
        return 0
    if n == shape[1]:
        return 1
    raise ValueError(f"dora_scale {tuple(scale_shape)} fits neither the weight's {shape[0]} output rows "
                     f"nor its {shape[1]} input columns")


def dora_delta(weight: Tensor, delta: Tensor, dora_scale: Tensor) -> Tensor:
    """DoRA: the update that takes W to dora_scale·(W+ΔW)/‖W+ΔW‖, as a plain additive ΔW.

    W is the weight the adapter lands on, earlier adapters' ΔW included (ComfyUI's and Forge's
    `weight_decompose` patch the weight as it stands), and the strength m scales this whole
    update: W + m·(dora_scale·(W+ΔW)/‖W+ΔW‖ − W), as theirs does. The norm is that of each input
    column of W+ΔW over the output rows (and kernel), ComfyUI's column norm, or of each output row
    when dora_scale has one entry per row (`dora_axis`). Each is taken over W+ΔW, the magnitude
    DoRA trains and LyCORIS applies: ComfyUI's output-row branch takes ‖W‖ before ΔW instead,
    which leaves the rows off the magnitudes the file holds, so that branch is not followed.
    """
    merged = weight + delta
    dims = merged.dim() - 1
    if dora_axis(tuple(dora_scale.shape), merged.shape) == 0:
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(merged.shape[0], *[1] * dims)
    else:
        norm = (merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
                .reshape(merged.shape[1], *[1] * dims).transpose(0, 1))
    norm = norm + torch.finfo(merged.dtype).eps
    return merged * (dora_scale.reshape(norm.shape) / norm) - weight


def oft_delta(weight: Tensor, blocks: Tensor, alpha: float | None) -> Tensor:
    """OFT (LyCORIS diag-oft): each block of b output rows of W turned by the orthogonal R = (I+Q)(I−Q)⁻¹
    (Cayley) of the skew Q = B − Bᵀ, as ΔW = R-turned W − W. alpha bounds ‖Q‖ at alpha·rows (LyCORIS,
    A1111); 0 or none: no bound (LyCORIS, ComfyUI; A1111 reads 0 as "no turn at all")."""
    n, b = blocks.shape[0], blocks.shape[1]
    q = blocks - blocks.transpose(1, 2)
    if alpha:
        bound = float(alpha) * weight.shape[0]
        norm = torch.norm(q) + 1e-8
        if norm > bound:
            q = q * (bound / norm)
    eye = torch.eye(b, dtype=q.dtype, device=q.device)
    r = (eye + q) @ torch.linalg.inv(eye - q)
    w = weight.to(r.dtype).reshape(n, b, *weight.shape[1:])
    return torch.einsum("k n m, k n ... -> k m ...", r - eye, w).reshape(weight.shape)


def module_delta(kind: str, tensors: dict[str, Tensor], alpha: float | None,
                 shape: torch.Size | tuple) -> Tensor:
    """ΔW of one module from its kohya/LyCORIS sub-tensors (no DoRA; see dora_delta; OFT: oft_delta)."""
    t = tensors
    if kind == "lora":
        return lora_delta(t["lora_up.weight"], t["lora_down.weight"], alpha, shape, t.get("lora_mid.weight"))
    if kind == "loha":
        return loha_delta(t["hada_w1_a"], t["hada_w1_b"], t["hada_w2_a"], t["hada_w2_b"], alpha, shape,
                          t.get("hada_t1"), t.get("hada_t2"))
    if kind == "lokr":
        return lokr_delta(t.get("lokr_w1"), t.get("lokr_w1_a"), t.get("lokr_w1_b"), t.get("lokr_w2"),
                          t.get("lokr_w2_a"), t.get("lokr_w2_b"), alpha, shape, t.get("lokr_t2"))
    if kind == "full":
        return t["diff"].reshape(shape)
    raise ValueError(f"unknown adapter kind {kind!r}")


def module_kind(subkeys) -> str:
    """Which adapter kind a module's sub-keys describe."""
    keys = set(subkeys)
    if "lora_down.weight" in keys and "lora_up.weight" in keys:
        return "lora"
    if {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= keys:
        return "loha"
    if ({"lokr_w1"} & keys or {"lokr_w1_a", "lokr_w1_b"} <= keys) and (
            {"lokr_w2"} & keys or {"lokr_w2_a", "lokr_w2_b"} <= keys):
        return "lokr"
    if "diff" in keys:
        return "full"
    if "oft_blocks" in keys:
        return "oft"
    return "unknown"


def depends_on_weight(kind: str, subkeys) -> bool:
    """Whether the module's ΔW is computed from the weight it lands on (DoRA's rescale, OFT's rotation)."""
    return kind == "oft" or "dora_scale" in set(subkeys)


KNOWN_SUBKEYS = {
    "lora": {"lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha", "dora_scale"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha",
             "dora_scale"},
    "full": {"diff", "diff_b", "alpha"},
    "oft": {"oft_blocks", "alpha"},
}
