"""Low-rank algebra on kohya LoRA modules: resize, merge (concatenate or project), extract.

A module is a dict `{"lora_down.weight", "lora_up.weight", "alpha"}` as in a kohya file, its
update ΔW = (alpha/r)·up·down (a Conv2d flattened to [out, in·kh·kw]). Nothing here forms the
d×k update of a LoRA: the best rank-k approximation of up·down comes from a QR of `up`
[d, r] and of `downᵀ` [k, r] and an SVD of the r×r core R_u·R_dᵀ — O((d+k)·r²) instead of the
O(d·k·min(d,k)) of an SVD of ΔW, and exact (Eckart–Young holds for the product as a whole).

Conventions for what is written (the same as kohya's tools, so their files and ours compare):
- the singular values go into `up` (U·S), `down` keeps orthonormal rows (Vᵀ);
- resize keeps each module's strength alpha/r: alpha' = (alpha/r)·k (kohya's resize_lora.py);
- merge and extract, which have no single source strength, write alpha = rank (scale 1).

Plain LoRA modules (Tucker `lora_mid` included: it folds into a kxk `down` exactly) are taken as
factors. LoHa and LoKr updates are Hadamard/Kronecker products, not low-rank products: their exact
ΔW is formed and split by an SVD (U·S, Vᵀ), so that resize turns them into the best plain LoRA of
the rank asked, one a loader without LyCORIS reads. Their layer shape is the one the factors tell:
a 3×3 convolution's kernel only where the file carries it (Tucker, a 4-D `lokr_w2`). DoRA's and OFT's
updates depend on the base weight; those are refused with the module named: merge them into a
checkpoint instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Mapping, Sequence

import torch
from torch import Tensor

from ..errors import LoraKitError
from .functional import lora_scale, module_kind
from .ranks import Dynamic, pick_rank

Module = Mapping[str, Tensor]


# Resize and merge work in float64: the factors have only r columns, so it costs little, and the
# truncation stays within ~1e-12 of the exact one (float32 drifts to ~1e-5 when σs crowd).
WORK = torch.float64


@dataclass
class Factors:
    """ΔW = scale · up @ down with up [out, r] and down [r, in·kh·kw] (kernel () for Linear)."""

    up: Tensor
    down: Tensor
    scale: float
    kernel: tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """The adapted layer's weight shape."""
        return (self.up.shape[0], self.down.shape[1] // max(1, prod(self.kernel)), *self.kernel)

    def delta(self) -> Tensor:
        """The full update, for tests and references (the algebra itself never calls it)."""
        return (self.scale * self.up @ self.down).reshape(self.shape)


@dataclass
class RankInfo:
    """What a truncation kept, as kohya's `--verbose` prints it."""

    old_rank: int
    new_rank: int
    fro_retained: float  # ‖kept σ‖₂ / ‖σ‖₂: share of ‖ΔW‖_F kept
    sum_retained: float  # Σ kept σ / Σ σ
    max_ratio: float  # σ₁ / σ_k


def factors(module: Module, name: str = "") -> Factors:
    """A module's factors in working precision; refuses kinds without a low-rank product."""
    kind = module_kind(module.keys())
    where = f"module {name}: " if name else ""
    if kind in ("loha", "lokr") and "dora_scale" not in module:
        return _dense_factors(module, kind)
    if kind == "oft":
        raise LoraKitError(f"{where}OFT modules turn the base weight, so their update depends on it and cannot be "
                           "resized or merged here; merge the file into a checkpoint instead")
    if kind != "lora":
        raise LoraKitError(f"{where}{kind} modules have no low-rank factors to resize or merge; "
                           "merge the file into a checkpoint instead")
    if "dora_scale" in module:
        raise LoraKitError(f"{where}DoRA modules depend on the base weight and cannot be resized or merged here")
    up, down = module["lora_up.weight"], module["lora_down.weight"]
    rank = down.shape[0]
    alpha = module.get("alpha")
    scale = lora_scale(None if alpha is None else float(alpha), rank)
    mid = module.get("lora_mid.weight")
    if mid is not None:  # Tucker: ΔW[o,i,k,l] = Σ up[o,n]·mid[n,m,k,l]·down[m,i] → a kxk down of rank n
        down = torch.einsum("nmkl,mi->nikl", mid.to(WORK), down.reshape(rank, -1).to(WORK))
    up2 = up.reshape(up.shape[0], -1).to(WORK)
    down2 = down.reshape(down.shape[0], -1).to(WORK)
    if up2.shape[1] != down2.shape[0]:
        raise LoraKitError(f"{where}lora_up has rank {up2.shape[1]} but lora_down has rank {down2.shape[0]}")
    return Factors(up2, down2, scale, tuple(down.shape[2:]))


def _dense_shape(t: Module, kind: str) -> tuple[int, ...]:
    """The adapted layer's weight shape as a LoHa's or LoKr's factors tell it (flattened for a
    convolution whose kernel they do not carry)."""
    if kind == "loha":
        if "hada_t1" in t:
            return (t["hada_w1_a"].shape[1], t["hada_w1_b"].shape[1], *t["hada_t1"].shape[2:])
        return (t["hada_w1_a"].shape[0], t["hada_w1_b"].shape[1])
    w1 = t["lokr_w1"].shape if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
    if "lokr_w2" in t:
        w2 = tuple(t["lokr_w2"].shape)
    elif "lokr_t2" in t:
        w2 = (t["lokr_w2_a"].shape[1], t["lokr_w2_b"].shape[1], *t["lokr_t2"].shape[2:])
    else:
        w2 = (t["lokr_w2_a"].shape[0], t["lokr_w2_b"].shape[1])
    return (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])


def _dense_factors(module: Module, kind: str) -> Factors:
    """A LoHa's or LoKr's exact ΔW as full-rank factors (U·S, Vᵀ of its SVD, scale 1): what resize
    truncates to the best plain LoRA of a lower rank."""
    from .functional import module_delta

    shape = _dense_shape(module, kind)
    alpha = module.get("alpha")
    t = {k: v.to(WORK) for k, v in module.items() if k != "alpha"}
    delta = module_delta(kind, t, None if alpha is None else float(alpha), shape).reshape(shape[0], -1)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return Factors(u * s, vh, 1.0, tuple(shape[2:]))


def to_module(up: Tensor, down: Tensor, alpha: float, kernel: tuple[int, ...], in_features: int,
              dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """kohya tensors from 2-D factors: conv down [k, in, kh, kw], conv up [out, k, 1, 1]."""
    k = down.shape[0]
    if kernel:
        up_t = up.reshape(up.shape[0], k, 1, 1)
        down_t = down.reshape(k, in_features, *kernel)
    else:
        up_t, down_t = up, down
    return {"lora_down.weight": down_t.to(dtype).contiguous(), "lora_up.weight": up_t.to(dtype).contiguous(),
            "alpha": torch.tensor(float(alpha), dtype=dtype)}


class Basis:
    """Thin QR of a factor a [d, r] = Q·R, with Q applied on demand.

    CholeskyQR (R = chol(aᵀa)ᵀ, Q = a·R⁻¹) runs at matrix-multiply speed, several times faster
    than Householder on the 10⁴×10² factors of a merge, and Q is never formed: Q·M = a·(R⁻¹M).
    It is used when the Gram matrix is safely positive definite (diagonal of R within 1e-7 of
    its largest: in float64 the top singular directions then stay accurate to ~1e-14);
    rank-deficient or ill-conditioned factors, and wide ones, get Householder QR.
    """

    def __init__(self, a: Tensor):
        self.a, self.q = a, None
        if a.shape[0] > a.shape[1]:
            chol, info = torch.linalg.cholesky_ex(a.T @ a)
            diag = chol.diagonal()
            if int(info) == 0 and float(diag.min()) > 1e-7 * float(diag.max()):
                self.r = chol.T
                return
        self.q, self.r = torch.linalg.qr(a)

    def times(self, m: Tensor) -> Tensor:
        """Q @ m."""
        if self.q is not None:
            return self.q @ m
        return self.a @ torch.linalg.solve_triangular(self.r, m, upper=True)


@dataclass
class CoreSVD:
    """up @ down = (Q_u·U_c)·diag(S)·(Q_d·V_c)ᵀ, kept in factored form until the rank is chosen."""

    left: Basis  # of up
    uc: Tensor
    s: Tensor
    vch: Tensor
    right: Basis  # of downᵀ

    def vectors(self, k: int) -> tuple[Tensor, Tensor]:
        """(U_k, V_kᵀ): the top k singular vectors."""
        return self.left.times(self.uc[:, :k]), self.right.times(self.vch[:k].T).T

    def top(self, k: int) -> tuple[Tensor, Tensor]:
        """(U_k·S_k, V_kᵀ): the best rank-k factors, singular values in the first."""
        u, vh = self.vectors(k)
        return u * self.s[:k], vh


def core_svd(up: Tensor, down: Tensor) -> CoreSVD:
    """The SVD of up @ down without forming it: QR of up and of downᵀ, SVD of the small core."""
    left, right = Basis(up), Basis(down.T)
    uc, s, vch = torch.linalg.svd(left.r @ right.r.T, full_matrices=False)
    return CoreSVD(left, uc, s, vch, right)


def svd_factors(up: Tensor, down: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD U·diag(S)·Vh of up @ down, computed through `core_svd`."""
    c = core_svd(up, down)
    u, vh = c.vectors(len(c.s))
    return u, c.s, vh


def lowrank_truncate(up: Tensor, down: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The best rank-`rank` factors (U·S, Vh) of up @ down (Eckart–Young), 2-D tensors."""
    c = core_svd(up.to(WORK), down.to(WORK))
    return c.top(min(rank, len(c.s)))


def _info(s: Tensor, old_rank: int, k: int) -> RankInfo:
    s = s.double()
    total_sq, total = float(s.pow(2).sum()), float(s.abs().sum())
    kept = s[:k]
    return RankInfo(old_rank, k,
                    float(kept.pow(2).sum() / total_sq) ** 0.5 if total_sq > 0 else 1.0,
                    float(kept.abs().sum() / total) if total > 0 else 1.0,
                    float(s[0] / s[k - 1]) if float(s[k - 1]) > 0 else float("inf"))


def resize_factors(f: Factors, rank: int | None, dynamic: Dynamic | None = None,
                   dtype: torch.dtype = torch.float32) -> tuple[dict[str, Tensor], RankInfo]:
    """Truncate factors to `rank` (or by `dynamic`, capped by `rank`, else by their own rank)."""
    c = core_svd(f.up, f.down)  # of the unscaled product, as kohya (its zero test looks at S)
    k = pick_rank(c.s, f.rank if rank is None else rank, dynamic)
    keep = f.scale if f.scale != 0 else 1.0  # alpha 0 means ΔW = 0: write zeros at scale 1
    up, down = c.top(k)
    if keep != f.scale:
        up = up * (f.scale / keep)
    return to_module(up, down, keep * k, f.kernel, f.shape[1], dtype), _info(c.s, f.rank, k)


def resize_module(module: Module, rank: int | None = None, dynamic: Dynamic | None = None, *, name: str = "",
                  dtype: torch.dtype = torch.float32) -> tuple[dict[str, Tensor], RankInfo]:
    """One module at a lower rank with the same strength: alpha' = (alpha/r)·k."""
    if rank is not None and rank < 1:
        raise LoraKitError(f"rank must be at least 1, got {rank}")
    return resize_factors(factors(module, name), rank, dynamic, dtype)


def concat_factors(modules: Sequence[Module], weights: Sequence[float], name: str = "") -> Factors:
    """Σ wᵢ·ΔWᵢ as one LoRA of rank Σ rᵢ: up = [w₁s₁·up₁, w₂s₂·up₂, …], down = [down₁; down₂; …]."""
    if len(modules) != len(weights):
        raise ValueError("one weight per module")
    fs = [factors(m, name) for m in modules]
    first = fs[0]
    for f in fs[1:]:
        if f.shape != first.shape:
            where = f"module {name}: " if name else ""
            raise LoraKitError(f"{where}layer shapes differ ({tuple(first.shape)} vs {tuple(f.shape)}): "
                               "the LoRAs are for different models")
    up = torch.cat([f.up * (w * f.scale) for f, w in zip(fs, weights)], dim=1)
    down = torch.cat([f.down for f in fs], dim=0)
    return Factors(up, down, 1.0, first.kernel)


def concat(modules: Sequence[Module], weights: Sequence[float], *, name: str = "",
           dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The exact merge: ranks add, alpha = new rank so the scale is 1, nothing is lost."""
    f = concat_factors(modules, weights, name)
    return to_module(f.up, f.down, f.rank, f.kernel, f.shape[1], dtype)


def project(modules: Sequence[Module], weights: Sequence[float], rank: int | None,
            dynamic: Dynamic | None = None, *, name: str = "",
            dtype: torch.dtype = torch.float32) -> tuple[dict[str, Tensor], RankInfo]:
    """The best rank-`rank` LoRA of Σ wᵢ·ΔWᵢ (alpha = rank): concatenate, then truncate."""
    if rank is not None and rank < 1:
        raise LoraKitError(f"rank must be at least 1, got {rank}")
    f = concat_factors(modules, weights, name)
    c = core_svd(f.up, f.down)
    k = pick_rank(c.s, f.rank if rank is None else rank, dynamic)
    up, down = c.top(k)
    return to_module(up, down, k, f.kernel, f.shape[1], dtype), _info(c.s, f.rank, k)


# extraction: the best LoRA of a full update ---------------------------------------------------

def _thin_svd(a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """LAPACK is ~3× slower on a wide matrix than on its transpose: always go tall."""
    if a.shape[0] >= a.shape[1]:
        return torch.linalg.svd(a, full_matrices=False)
    v, s, uh = torch.linalg.svd(a.T, full_matrices=False)
    return uh.T, s, v.T


def randomized_svd(a: Tensor, rank: int, oversample: int = 8, n_iter: int = 2, *,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The top `rank` singular triplets of a 2-D matrix (Halko, Martinsson & Tropp 2011).

    A Gaussian sketch of rank+oversample columns finds the range, `n_iter` power iterations
    (re-orthonormalised each half step, so float32 keeps its precision) sharpen it, and an SVD of
    the small QᵀA gives the factors: 2·(n_iter+1) products with A instead of an SVD of A.
    """
    m, n = a.shape
    q = min(rank + oversample, m, n)
    if generator is None:
        generator = torch.Generator(device=a.device).manual_seed(0)
    omega = torch.randn(n, q, generator=generator, dtype=a.dtype, device=a.device)
    basis = torch.linalg.qr(a @ omega).Q
    for _ in range(n_iter):
        basis = torch.linalg.qr(a.T @ basis).Q
        basis = torch.linalg.qr(a @ basis).Q
    ub, s, vh = _thin_svd(basis.T @ a)
    return (basis @ ub[:, :rank]), s[:rank], vh[:rank]


@dataclass
class ExtractInfo:
    """One extracted module: its rank, ‖ΔW‖_F², ‖ΔW − LoRA‖_F² and which SVD made it."""

    rank: int
    delta_sq: float
    error_sq: float
    exact: bool

    @property
    def relative_error(self) -> float:
        return (self.error_sq / self.delta_sq) ** 0.5 if self.delta_sq > 0 else 0.0


def sq_norm(a: Tensor) -> float:
    """‖a‖_F² to ~1e-9: float32 row norms, then a double sum (one float32 norm over millions of
    entries drifts by ~1e-4, enough to skew the error of a good fit by a percent)."""
    a = a.reshape(a.shape[0], -1) if a.dim() > 1 else a.reshape(1, -1)
    return float(torch.linalg.vector_norm(a, dim=1).double().pow(2).sum())


def _quantile(x: Tensor, q: float) -> float:
    """torch.quantile (linear interpolation, as kohya) with numpy past torch's 2²⁴-element limit."""
    if x.numel() <= 1 << 24:
        return float(torch.quantile(x, q))
    import numpy as np

    return float(np.quantile(x.cpu().numpy(), q))


def clamp_factors(up: Tensor, down: Tensor, quantile: float) -> tuple[Tensor, Tensor]:
    """kohya's outlier clamp: both factors into ±(the `quantile` of all their values)."""
    hi = _quantile(torch.cat([up.flatten(), down.flatten()]).float(), quantile)
    return up.clamp(-hi, hi), down.clamp(-hi, hi)


def extract_module(delta: Tensor, rank: int | None, dynamic: Dynamic | None = None, *,
                   clamp_quantile: float | None = None, oversample: int = 8, n_iter: int = 2,
                   exact: bool | None = None, measure: bool = True,
                   generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], ExtractInfo]:
    """The LoRA (alpha = rank, S in up) whose ΔW best approximates `delta` (Linear or Conv2d).

    `rank` caps the rank (with `dynamic`, kohya's methods pick it below the cap); None means no
    cap, which needs the whole spectrum and so an exact SVD. The randomized SVD runs unless the
    matrix is too small for it to pay (min(d, k) ≤ 2·(rank+oversample)) or `exact` says so.
    sv_cumulative needs Σσ over the whole spectrum: it costs a values-only SVD on top.
    `measure=False` skips the explicit residual that keeps a near-exact fit's reported error exact.
    """
    if rank is not None and rank < 1:
        raise LoraKitError(f"rank must be at least 1, got {rank}")
    shape = tuple(delta.shape)
    a = delta.reshape(shape[0], -1)
    if not a.is_floating_point() or a.dtype in (torch.float16, torch.bfloat16):
        a = a.float()
    m, n = a.shape
    cap = min(m, n) if rank is None else min(rank, m, n)
    delta_sq = sq_norm(a)
    if exact is None:
        exact = rank is None or 2 * (cap + oversample) >= min(m, n)
    if exact:
        u, s, vh = _thin_svd(a)
        k = pick_rank(s, cap, dynamic)
    else:
        u, s, vh = randomized_svd(a, cap, oversample, n_iter, generator=generator)
        total_abs = None
        if dynamic is not None and dynamic.method == "sv_cumulative":
            total_abs = float(torch.linalg.svdvals(a).double().sum())
        k = pick_rank(s, cap, dynamic, total_sq=delta_sq, total_abs=total_abs)
    up, down = u[:, :k] * s[:k], vh[:k]
    if clamp_quantile is not None:
        up, down = clamp_factors(up, down, clamp_quantile)
    # For an SVD, and for the sketch's too (U_k S_k V_kᵀ is a projection of A), the error is
    # ‖A‖² − Σ_{i≤k} σᵢ² exactly; only near-exact fits (cancellation) or a clamp need the residual.
    error_sq = max(0.0, delta_sq - float(s[:k].double().pow(2).sum()))
    if clamp_quantile is not None or (measure and error_sq < 1e-4 * delta_sq):
        error_sq = sq_norm(torch.addmm(a, up, down, alpha=-1))
    module = to_module(up, down, k, shape[2:], shape[1] if len(shape) > 1 else 1, torch.float32)
    return module, ExtractInfo(k, delta_sq, error_sq, exact)
