"""The figures of an evaluation, from L2-normalised embeddings (rows) and pixel arrays.

Plain tensor arithmetic: testable without any model, identical for CLIP and DINO.
"""

from __future__ import annotations

import numpy as np
import torch


def mean_pairwise(a: torch.Tensor, b: torch.Tensor, skip_diagonal: bool = False) -> float | None:
    """Mean cosine similarity over every (row of a, row of b) pair: DreamBooth's DINO / CLIP-I.

    skip_diagonal: a and b are the same set and an image is not compared with itself.
    """
    if len(a) == 0 or len(b) == 0:
        return None
    sims = a @ b.T
    if skip_diagonal:
        n = len(a)
        if n < 2:
            return None
        return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))
    return float(sims.mean())


def paired(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of row i of a with row i of b (CLIP-T: image i against its prompt)."""
    return (a * b).sum(-1)


def feature_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cosine of matching rows: 0 for the same image, grows as the content moves (≤ 2)."""
    return (1 - paired(a, b)).clamp_min(0)


def pixel_distance(a, b) -> float:
    """Mean absolute difference of two images on a 0–1 scale."""
    x = np.asarray(a.convert("RGB"), dtype=np.float32) / 255.0
    y = np.asarray(b.convert("RGB"), dtype=np.float32) / 255.0
    return float(np.abs(x - y).mean())


def mean(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None
