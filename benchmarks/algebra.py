"""LoRA algebra on SD 1.5 sizes: lorakit's low-rank routes vs forming ΔW and a full SVD (kohya's way).

Inputs, all random and seeded, SD 1.5 shapes (kohya's default targets: 192 UNet + 72 text-encoder
modules): a rank-64 LoRA resized to rank 16; three rank-64 LoRAs (different alphas) merged with
weights 0.8/0.5/0.3, exactly (concatenation) and projected to rank 64; and two SD 1.5 UNets
(fp32, random base, tuned = base + a rank-48 update with σᵢ ∝ 0.95ⁱ + 5 % noise on every targeted
layer) from which a rank-32 LoRA is extracted.

The reference forms each full update and runs `torch.linalg.svd` on it, as kohya's
resize_lora.py / svd_merge_lora.py / extract_lora_from_models.py do, made a little kinder than
kohya's own call: thin SVD (kohya keeps full_matrices=True) of the tall orientation (LAPACK is
~3× slower on a wide 1280×5120 matrix than on its transpose); no clamp on either side. Errors
are relative Frobenius errors over all modules, ‖target − result‖ / ‖target‖, where the target
is the original update (resize), the exact weighted sum (merge) or tuned − base (extract). The
timings are the math on tensors in memory, one run each, no file I/O; lorakit's resize and merge
run on one thread as its API does (tiny LAPACK calls), the rest on `--threads`.
Usage: python benchmarks/algebra.py [--threads N] [--skip-extract]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_gb, sd15_unet, table, write_results, CONFIGS  # noqa: E402

from lorakit.ops.algebra import single_thread  # noqa: E402
from lorakit.lora import ModelParts, select  # noqa: E402
from lorakit.lora import algebra as A  # noqa: E402
from lorakit.lora import functional as LF  # noqa: E402

RANK, RESIZE_TO, EXTRACT_RANK = 64, 16, 32
MERGE_WEIGHTS, MERGE_ALPHAS = (0.8, 0.5, 0.3), (32.0, 64.0, 16.0)


# inputs -------------------------------------------------------------------------------------

def sd15_target_shapes() -> dict[str, tuple[int, ...]]:
    """kohya name → weight shape of every default (`transformer`) target, built on the meta device."""
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = sd15_unet(device="meta")
    with torch.device("meta"):
        te = CLIPTextModel(CLIPTextConfig.from_json_file(str(CONFIGS / "sd15" / "text_encoder" / "config.json")))
    parts = ModelParts("sd1", unet, [te], dict(unet.config))
    shapes = {t.name: tuple(t.module.weight.shape) for t in select(parts, "transformer")}
    n_unet = sum(n.startswith("lora_unet_") for n in shapes)
    assert (n_unet, len(shapes) - n_unet) == (192, 72), (n_unet, len(shapes) - n_unet)
    return shapes


def random_lora(shapes, rank: int, alpha: float, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        conv = len(shape) == 4
        down = torch.randn(rank, *shape[1:], generator=g) / (shape[1] * (shape[2] * shape[3] if conv else 1)) ** 0.5
        up = torch.randn(shape[0], rank, *((1, 1) if conv else ()), generator=g) * 0.01
        out[name] = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(alpha)}
    return out


def full_delta(m, shape) -> torch.Tensor:
    return LF.lora_delta(m["lora_up.weight"], m["lora_down.weight"], float(m["alpha"]), shape)


def _2d(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def svd_truncate(w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: full SVD of the formed update, keep the top k (S folded into up, as kohya)."""
    a = _2d(w)
    if a.shape[0] < a.shape[1]:
        v, s, uh = torch.linalg.svd(a.T, full_matrices=False)
        u, vh = uh.T, v.T
    else:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u[:, :k] * s[:k], vh[:k]


def truncate(factors: tuple[torch.Tensor, torch.Tensor], k: int) -> torch.Tensor:
    up, down = factors
    return up[:, :k] @ down[:k]


class ErrorSum:
    """Σ‖target − result‖² / Σ‖target‖² over modules, in double precision."""

    def __init__(self):
        self.err = self.ref = 0.0

    def add(self, target: torch.Tensor, result: torch.Tensor) -> None:
        t = _2d(target).double()
        self.err += float((t - _2d(result).double()).pow(2).sum())
        self.ref += float(t.pow(2).sum())

    @property
    def value(self) -> float:
        return (self.err / self.ref) ** 0.5


def row(name, ours_s, ref_s, ours_err, ref_err):
    return {"operation": name, "lorakit_s": ours_s, "reference_s": ref_s,
            "speedup": ref_s / ours_s if ref_s else None, "lorakit_rel_error": ours_err,
            "reference_rel_error": ref_err,
            "error_ratio": ours_err / ref_err if ref_err else None}


# the three operations --------------------------------------------------------------------------

def bench_resize(shapes) -> dict:
    lora = random_lora(shapes, RANK, RANK / 2, seed=0)
    t = time.perf_counter()
    with single_thread():
        ours = {n: A.resize_module(m, RESIZE_TO)[0] for n, m in lora.items()}
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = {}
    for n, m in lora.items():
        up, down = svd_truncate(full_delta(m, shapes[n]), RESIZE_TO)
        ref[n] = (up, down)
    ref_s = time.perf_counter() - t
    e_ours, e_ref, e_same = ErrorSum(), ErrorSum(), ErrorSum()
    for n, m in lora.items():
        w = full_delta(m, shapes[n])
        mine = full_delta(ours[n], shapes[n])
        theirs = ref[n][0] @ ref[n][1]
        e_ours.add(w, mine)
        e_ref.add(w, theirs)
        e_same.add(theirs, mine)
    out = row(f"resize rank {RANK} → {RESIZE_TO} ({len(shapes)} modules)", ours_s, ref_s, e_ours.value, e_ref.value)
    out["lorakit_vs_reference"] = e_same.value
    return out


def bench_merge(shapes) -> list[dict]:
    loras = [random_lora(shapes, RANK, a, seed=1 + i) for i, a in enumerate(MERGE_ALPHAS)]
    names = list(shapes)
    t = time.perf_counter()
    with single_thread():
        cat = {n: A.concat([l[n] for l in loras], MERGE_WEIGHTS) for n in names}
    cat_s = time.perf_counter() - t
    t = time.perf_counter()
    with single_thread():
        proj = {n: A.project([l[n] for l in loras], MERGE_WEIGHTS, RANK)[0] for n in names}
    proj_s = time.perf_counter() - t
    t = time.perf_counter()  # one SVD per module serves both rows: kept to 64, or to 192 (lossless)
    ref = {}
    for n in names:
        w = sum(wt * full_delta(l[n], shapes[n]) for wt, l in zip(MERGE_WEIGHTS, loras))
        ref[n] = svd_truncate(w, 3 * RANK)
    ref_s = time.perf_counter() - t
    e_cat, e_proj, e_ref, e_ref_full = ErrorSum(), ErrorSum(), ErrorSum(), ErrorSum()
    for n in names:
        exact = sum(wt * full_delta(l[n], shapes[n]) for wt, l in zip(MERGE_WEIGHTS, loras))
        e_cat.add(exact, full_delta(cat[n], shapes[n]))
        e_proj.add(exact, full_delta(proj[n], shapes[n]))
        e_ref.add(exact, truncate(ref[n], RANK))
        e_ref_full.add(exact, truncate(ref[n], 3 * RANK))
    tag = f"3 rank-{RANK} LoRAs"
    return [row(f"merge {tag} → rank {RANK} (projected)", proj_s, ref_s, e_proj.value, e_ref.value),
            row(f"merge {tag} → rank {3 * RANK} (exact concat; reference keeps {3 * RANK})", cat_s, ref_s,
                e_cat.value, e_ref_full.value)]


def plant(tuned_parts, seed: int = 0, rank: int = 48, decay: float = 0.95, noise: float = 0.05) -> None:
    """tuned += a rank-48 update with σᵢ ∝ decayⁱ plus Gaussian noise of `noise`·its norm, per layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in select(tuned_parts, "transformer"):
            w = t.module.weight
            m, n = w.shape[0], w[0].numel()
            u = torch.linalg.qr(torch.randn(m, rank, generator=g)).Q
            v = torch.linalg.qr(torch.randn(n, rank, generator=g)).Q
            s = decay ** torch.arange(rank, dtype=torch.float32)
            low = (u * s) @ v.T
            low *= 0.02 * float(_2d(w).norm()) / float(low.norm())
            low += torch.randn(m, n, generator=g) * (noise * float(low.norm()) / (m * n) ** 0.5)
            w.add_(low.reshape(w.shape))


def bench_extract() -> dict:
    from lorakit.ops.extract import extract_parts

    torch.manual_seed(0)
    base = sd15_unet()
    tuned = copy.deepcopy(base)
    cfg = dict(base.config)
    base_parts, tuned_parts = ModelParts("sd1", base, [], cfg), ModelParts("sd1", tuned, [], cfg)
    plant(tuned_parts)
    t = time.perf_counter()
    res = extract_parts(base_parts, tuned_parts, rank=EXTRACT_RANK)
    ours_s = time.perf_counter() - t
    pairs = list(zip(select(base_parts, "transformer"), select(tuned_parts, "transformer")))
    t = time.perf_counter()
    ref = {}
    with torch.no_grad():
        for b, tt in pairs:
            d = tt.module.weight.float() - b.module.weight.float()
            ref[b.name] = svd_truncate(d, EXTRACT_RANK)
    ref_s = time.perf_counter() - t
    e_ours, e_ref = ErrorSum(), ErrorSum()
    with torch.no_grad():
        for b, tt in pairs:
            d = tt.module.weight.float() - b.module.weight.float()
            m = res.modules[b.name]
            e_ours.add(d, full_delta(m, d.shape))
            e_ref.add(d, ref[b.name][0] @ ref[b.name][1])
    out = row(f"extract rank {EXTRACT_RANK} from two SD 1.5 UNets ({len(pairs)} modules)", ours_s, ref_s,
              e_ours.value, e_ref.value)
    out["lorakit_reported_unet_error"] = res.parts["unet"].relative_error
    del base, tuned, base_parts, tuned_parts, res, ref
    gc.collect()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-extract", action="store_true", help="leave out the two-UNet extraction")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = sd15_target_shapes()
    rows = [bench_resize(shapes)]
    print(rows[-1], flush=True)
    rows += bench_merge(shapes)
    print(rows[-2:], flush=True)
    if not args.skip_extract:
        rows.append(bench_extract())
        print(rows[-1], flush=True)
    header = ["operation", "lorakit (s)", "reference: ΔW + full SVD (s)", "speed-up", "lorakit rel. error",
              "reference rel. error", "error ratio"]
    cells = [[r["operation"], f"{r['lorakit_s']:.2f}", f"{r['reference_s']:.2f}", f"{r['speedup']:.0f}×",
              f"{r['lorakit_rel_error']:.4g}", f"{r['reference_rel_error']:.4g}",
              f"{r['error_ratio']:.4g}" if r["error_ratio"] is not None else "—"] for r in rows]
    print(table(cells, header))
    goals = {"resize_speedup_ge_20": rows[0]["speedup"] >= 20}
    if not args.skip_extract:
        goals.update(extract_speedup_ge_10=rows[-1]["speedup"] >= 10, extract_error_ratio_le_1_01=rows[-1]["error_ratio"] <= 1.01)
    print("goals:", goals)
    path = write_results("algebra", {"rows": rows, "goals": goals, "machine": machine(),
                                     "load_average": os.getloadavg(), "peak_rss_gb": peak_rss_gb()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
