"""Helpers the DiT families' name tables share (each family's `naming.py` holds its own tables).

A family's naming module maps its original layout (SAI's, BFL's: what sd-scripts and ComfyUI
name) to diffusers' and provides `is_sai_path`, `is_diffusers_path`, `sai_of`, `diffusers_rows`,
`kohya_name`, `sai_path_of_kohya`, `diffusers_path_of_underscored` and `container`; the layouts
(`dit/layouts.py`) and targets (`dit/targets.py`) take it as a parameter.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor

from ...quantized import logical_shape as weight_shape  # noqa: F401 - the converters' shape of a weight

UNET_PREFIX = "lora_unet_"


def kohya_name(original_path: str) -> str:
    return UNET_PREFIX + original_path.replace(".", "_")


def swap_rows(rows: int) -> Tensor:
    """Row order of an adaLN layer whose two halves diffusers stores the other way round."""
    half = rows // 2
    return torch.cat([torch.arange(half, rows), torch.arange(0, half)])


def split_rows(out: dict, module: str, leaf: str, value: Tensor, weight: Tensor, diffusers_rows) -> None:
    """A fused layer's tensor (`leaf` of `module`, whose weight is `weight`) into `out` as the pieces
    diffusers names, each its rows of `value` (the family's `diffusers_rows` says which)."""
    rows, in_features = weight_shape(weight)[:2]
    for path, idx in diffusers_rows(module, rows, in_features):
        out[f"{path}.{leaf}"] = take_rows(value, idx)


def take_rows(value: Tensor, idx: Tensor) -> Tensor:
    """value's rows idx: a view where they are consecutive (q, k, v of a fused layer: a streamed load
    then holds no second copy of the layer), a copy otherwise (swapped adaLN halves)."""
    n = idx.numel()
    if n and torch.equal(idx, torch.arange(int(idx[0]), int(idx[0]) + n)):
        return value.narrow(0, int(idx[0]), n)
    return value[idx].contiguous()


def underscored(paths: Iterable[str]) -> dict[str, str]:
    """{path spelled with "_" for ".": path}: kohya's and OneTrainer's names read back."""
    return {p.replace(".", "_"): p for p in paths}


def stack_pieces(grouped: Mapping[tuple[str, str], Mapping[int, Tensor]],
                 diffusers_rows: Callable[[str, int, int], list]) -> dict[str, Tensor]:
    """{(original path, leaf): {piece: tensor}} → {original path.leaf: whole tensor}, each piece's
    rows put where `diffusers_rows` says (q/k/v stacked, swapped halves put back)."""
    widths = {path: pieces[0].shape[1] for (path, leaf), pieces in grouped.items() if leaf == "weight"}
    out: dict[str, Tensor] = {}
    for (path, leaf), pieces in grouped.items():
        ordered = [pieces[i] for i in sorted(pieces)]
        if ordered[0].dim() == 4:  # a patch embedding conv: never split
            out[f"{path}.{leaf}"] = ordered[0]
            continue
        rows = sum(p.shape[0] for p in ordered)
        whole = torch.empty((rows, *ordered[0].shape[1:]), dtype=ordered[0].dtype)
        for (_, idx), piece in zip(diffusers_rows(path, rows, widths[path]), ordered):
            whole[idx] = piece
        out[f"{path}.{leaf}"] = whole
    return out
