"""Fused ↔ split LoRA factors, exactly.

Some checkpoints hold several layers as one weight: SD3's and Flux's `attn.qkv` is q, k and v
stacked by rows, while diffusers keeps them as `to_q`, `to_k`, `to_v`. A LoRA on the fused
layer (ΔW = s·up·down, up [Σd, r]) is, row block by row block, three LoRAs that share `down`:
ΔW_i = s·up[rows_i]·down. The other way, three LoRAs of ranks r_i become one of rank Σr_i:
down = [down_1; down_2; down_3], up block-diagonal, each block scaled by s_i/s. Neither step
approximates anything; `lorakit resize` can lower the rank afterwards.

Rows are index tensors, so a permutation (SD3's last context adaLN stores shift/scale in the
other order in diffusers) is the same operation as a slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class Factors:
    """One plain LoRA: ΔW = (alpha/rank)·up·down."""

    down: Tensor  # [r, in]
    up: Tensor  # [out, r]
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


def split(fused: Factors, rows: Sequence[Tensor]) -> list[Factors]:
    """One LoRA on a stacked weight → one per row group, sharing `down` (and alpha)."""
    return [Factors(fused.down, fused.up[idx], fused.alpha) for idx in rows]


def fuse(pieces: Sequence[Factors], rows: Sequence[Tensor], out_features: int) -> Factors:
    """LoRAs on row groups of one stacked weight → one LoRA on the whole weight.

    When every piece has the same `down` (bit for bit) and the same scale, as after `split`, the
    result keeps that rank: up rows are put back in place. Otherwise the rank is the sum of the
    ranks with a block-diagonal `up`; pieces with another scale than the first get it folded
    into their block. Rows not covered by any piece stay zero.
    """
    if not pieces:
        raise ValueError("nothing to fuse")
    first = pieces[0]
    same_down = all(p.down.shape == first.down.shape and torch.equal(p.down, first.down) for p in pieces[1:])
    same_scale = all(p.scale == first.scale for p in pieces[1:])
    dtype = torch.promote_types(first.up.dtype, first.down.dtype)
    if same_down and same_scale:
        up = torch.zeros(out_features, first.rank, dtype=first.up.dtype)
        for p, idx in zip(pieces, rows):
            up[idx] = p.up
        return Factors(first.down, up, first.alpha)
    total = sum(p.rank for p in pieces)
    down = torch.cat([p.down.to(dtype) for p in pieces], dim=0)
    up = torch.zeros(out_features, total, dtype=dtype)
    scale = first.scale
    offset = 0
    for p, idx in zip(pieces, rows):
        block = p.up.to(dtype)
        if p.scale != scale:
            block = (block.float() * (p.scale / scale)).to(dtype)
        up[idx, offset:offset + p.rank] = block
        offset += p.rank
    # alpha such that alpha/total equals the first piece's scale
    return Factors(down, up, scale * total)


def delta(f: Factors) -> Tensor:
    """ΔW in fp32 (for tests and checks)."""
    return f.scale * (f.up.float() @ f.down.float())
