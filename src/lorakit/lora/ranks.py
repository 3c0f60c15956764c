"""How many singular values to keep: a fixed rank or one of kohya's dynamic methods.

The dynamic methods follow kohya's `networks/resize_lora.py` to the letter, so a file resized
here with `sv_fro:0.9` gets the ranks kohya would give it. With S sorted descending:

- `sv_ratio:X`      keep every σᵢ with σᵢ > σ₁ / X (strictly greater): the rank is the number
                    of singular values within a factor X of the largest.
- `sv_fro:X`        the smallest k with Σᵢ≤ₖ σᵢ² / Σ σᵢ² ≥ X², i.e. the rank-k truncation keeps
                    at least the fraction X of the Frobenius norm (X=0.9: 90 % of ‖ΔW‖_F).
- `sv_cumulative:X` the smallest k with Σᵢ≤ₖ σᵢ / Σ σᵢ ≥ X (share of the nuclear norm).

Then, as in kohya: the rank is at least 1 and at most len(S); a zero update (σ₁ ≤ 1e-6) gets
rank 1; and the rank never exceeds the cap (kohya's `--new_rank`, here `--rank` when given
alongside `--dynamic`, else the module's own rank).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import LoraKitError

MIN_SV = 1e-6
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass(frozen=True)
class Dynamic:
    """A dynamic rank rule, e.g. Dynamic("sv_fro", 0.9)."""

    method: str
    value: float

    def __post_init__(self):
        if self.method not in DYNAMIC_METHODS:
            raise LoraKitError(f"unknown dynamic method {self.method!r}: choose from {', '.join(DYNAMIC_METHODS)}")
        if self.method == "sv_ratio" and not self.value >= 1:
            raise LoraKitError(f"sv_ratio needs a ratio ≥ 1 (σ₁/σₖ), got {self.value:g}")
        if self.method != "sv_ratio" and not 0 < self.value <= 1:
            raise LoraKitError(f"{self.method} needs a share in (0, 1], got {self.value:g}")

    @classmethod
    def parse(cls, text: str) -> "Dynamic":
        """`sv_fro:0.9` → Dynamic("sv_fro", 0.9)."""
        method, sep, value = text.partition(":")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise LoraKitError(f"--dynamic wants METHOD:VALUE (e.g. sv_fro:0.9), got {text!r}")
        return cls(method.strip(), number)

    def __str__(self) -> str:
        return f"{self.method}:{self.value:g}"


def _index_ratio(s: Tensor, target: float) -> int:
    return int(torch.sum(s > s[0] / target).item()) - 1


def _index_share(weights: Tensor, target: float, total: float | None) -> int:
    total = float(weights.sum()) if total is None else float(total)
    shares = torch.cumsum(weights, dim=0) / total
    return int(torch.searchsorted(shares, torch.tensor([target], dtype=shares.dtype)).item())


def pick_rank(s: Tensor, cap: int, dynamic: Dynamic | None = None, *, total_sq: float | None = None,
              total_abs: float | None = None) -> int:
    """The rank to keep from descending singular values `s`, at most `cap`.

    `total_sq` / `total_abs` give Σσ² / Σσ over the full spectrum when `s` holds only its top
    values (a randomized SVD); ‖ΔW‖_F² is such a total for free.
    """
    s = s.detach().double()
    if cap < 1:
        raise LoraKitError(f"rank must be at least 1, got {cap}")
    if dynamic is None:
        index = cap - 1
    elif dynamic.method == "sv_ratio":
        index = _index_ratio(s, dynamic.value)
    elif dynamic.method == "sv_fro":
        index = _index_share(s.pow(2), dynamic.value ** 2, total_sq)
    else:
        index = _index_share(s.abs(), dynamic.value, total_abs)
    index = max(0, min(index, len(s) - 1))
    if len(s) == 0 or float(s[0]) <= MIN_SV:
        return 1
    return min(index + 1, cap)
