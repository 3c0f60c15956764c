"""Low-rank algebra against full SVDs of the full updates (the optimal answers, Eckart–Young)."""

import pytest
import torch

from lorakit.errors import LoraKitError
from lorakit.lora import algebra as A
from lorakit.lora import functional as LF
from lorakit.lora.ranks import Dynamic, pick_rank


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def make_module(out, inp, rank, alpha=None, kernel=(), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(rank, inp, *kernel, generator=g) / inp ** 0.5
    up = torch.randn(out, rank, *([1, 1] if kernel else []), generator=g) * 0.1
    m = {"lora_down.weight": down.to(dtype), "lora_up.weight": up.to(dtype)}
    if alpha is not None:
        m["alpha"] = torch.tensor(float(alpha))
    return m


def delta(module):
    down = module["lora_down.weight"]
    shape = (module["lora_up.weight"].shape[0], *down.shape[1:])
    alpha = module.get("alpha")
    return LF.lora_delta(module["lora_up.weight"].double(), down.double(), None if alpha is None else float(alpha),
                         shape, module.get("lora_mid.weight"))


def best(dw, k):
    """The optimal rank-k approximation from a full SVD of the full update."""
    a = dw.reshape(dw.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return (u[:, :k] * s[:k] @ vh[:k]).reshape(dw.shape)


@pytest.mark.parametrize("kernel", [(), (3, 3), (1, 1)])
def test_resize_equals_optimal_truncation(kernel):
    m = make_module(40, 24, 16, alpha=8, kernel=kernel)
    out, info = A.resize_module(m, 5)
    assert out["lora_down.weight"].shape == (5, 24, *kernel)
    assert out["lora_up.weight"].shape == ((40, 5, 1, 1) if kernel else (40, 5))
    assert rel(delta(out), best(delta(m), 5)) <= 1e-5
    assert float(out["alpha"]) / 5 == pytest.approx(8 / 16)  # same strength
    assert info.old_rank == 16 and info.new_rank == 5 and 0 < info.fro_retained < 1 and info.max_ratio >= 1


def test_resize_same_rank_is_lossless_and_keeps_missing_alpha_scale():
    m = make_module(30, 50, 8)  # no alpha: scale 1
    out, info = A.resize_module(m, 8)
    assert rel(delta(out), delta(m)) <= 1e-6
    assert float(out["alpha"]) == 8 and info.fro_retained == pytest.approx(1.0)


def test_resize_fp16_input_and_tall_rank():
    m = make_module(6, 200, 12, alpha=4, dtype=torch.float16)  # rank above out: the update has rank 6
    out, _ = A.resize_module(m, 10)
    assert out["lora_down.weight"].shape[0] == 6
    assert rel(delta(out), delta(m)) <= 1e-6


def test_tucker_mid_folds_into_a_conv_down():
    g = torch.Generator().manual_seed(3)
    m = {"lora_down.weight": torch.randn(4, 8, 1, 1, generator=g), "lora_up.weight": torch.randn(12, 4, 1, 1, generator=g),
         "lora_mid.weight": torch.randn(4, 4, 3, 3, generator=g), "alpha": torch.tensor(2.0)}
    full = LF.lora_delta(m["lora_up.weight"], m["lora_down.weight"], 2.0, (12, 8, 3, 3), m["lora_mid.weight"])
    out, _ = A.resize_module(m, 4)
    assert out["lora_down.weight"].shape == (4, 8, 3, 3) and "lora_mid.weight" not in out
    assert rel(delta(out), full) <= 1e-6
    out2, _ = A.resize_module(m, 2)
    assert rel(delta(out2), best(full, 2)) <= 1e-5


def test_resizes_loha_to_the_best_plain_lora_and_refuses_weight_dependent_kinds():
    torch.manual_seed(0)
    loha = {k: torch.randn(6, 4) if k.endswith("_a") else torch.randn(4, 5)
            for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
    loha["alpha"] = torch.tensor(2.0)
    exact = (loha["hada_w1_a"] @ loha["hada_w1_b"]) * (loha["hada_w2_a"] @ loha["hada_w2_b"]) * 0.5
    out, _ = A.resize_module(loha, 2, name="x")
    s = torch.linalg.svdvals(exact.double())
    assert abs(float((delta(out).double() - exact).norm()) - float(s[2:].norm())) <= 1e-5 * float(s.norm())
    assert rel(delta(A.resize_module(loha, 5, name="x")[0]), exact) <= 1e-6  # full rank: the same update
    oft = {"oft_blocks": torch.randn(2, 4, 4), "alpha": torch.tensor(0.0)}
    with pytest.raises(LoraKitError, match="OFT modules"):
        A.resize_module(oft, 2, name="x")
    dora = dict(make_module(8, 8, 2), dora_scale=torch.ones(8, 1))
    with pytest.raises(LoraKitError, match="DoRA"):
        A.concat([dora], [1.0])
    with pytest.raises(LoraKitError, match="at least 1"):
        A.resize_module(make_module(8, 8, 2), 0)


@pytest.mark.parametrize("kernel", [(), (3, 3)])
def test_concat_merge_is_the_exact_weighted_sum(kernel):
    a = make_module(32, 20, 8, alpha=4, kernel=kernel, seed=1)
    b = make_module(32, 20, 4, alpha=16, kernel=kernel, seed=2)
    c = make_module(32, 20, 6, kernel=kernel, seed=3)  # no alpha
    out = A.concat([a, b, c], [0.7, -0.3, 1.2])
    assert out["lora_down.weight"].shape[0] == 18 and float(out["alpha"]) == 18
    want = 0.7 * delta(a) - 0.3 * delta(b) + 1.2 * delta(c)
    assert rel(delta(out), want) <= 1e-6


def test_concat_rejects_different_shapes():
    with pytest.raises(LoraKitError, match="different models"):
        A.concat([make_module(32, 20, 4), make_module(32, 24, 4)], [1, 1], name="m")


@pytest.mark.parametrize("kernel", [(), (3, 3)])
def test_projected_merge_is_the_optimal_truncation_of_the_sum(kernel):
    a = make_module(48, 30, 8, alpha=4, kernel=kernel, seed=4)
    b = make_module(48, 30, 8, alpha=8, kernel=kernel, seed=5)
    out, info = A.project([a, b], [1.0, 0.5], 6)
    want = best(delta(a) + 0.5 * delta(b), 6)
    assert rel(delta(out), want) <= 1e-5
    assert float(out["alpha"]) == 6 and info.old_rank == 16 and info.new_rank == 6


@pytest.mark.parametrize("cond", [1e2, 1e6, 1e10])
def test_ill_conditioned_and_rank_deficient_factors(cond):
    """CholeskyQR where safe, Householder otherwise: the truncation stays optimal either way."""
    g = torch.Generator().manual_seed(11)
    q = torch.linalg.qr(torch.randn(300, 12, generator=g, dtype=torch.float64)).Q
    up = q * torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), 12, dtype=torch.float64)
    m = {"lora_up.weight": up, "lora_down.weight": torch.randn(12, 90, generator=g, dtype=torch.float64)}
    out, _ = A.resize_module(m, 5)
    assert rel(delta(out), best(delta(m), 5)) <= 1e-5
    twice, _ = A.project([m, m], [1.0, 0.5], 4)  # repeated columns: an exactly rank-deficient concat
    assert rel(delta(twice), best(1.5 * delta(m), 4)) <= 1e-5


def test_lowrank_truncate_matches_svd():
    g = torch.Generator().manual_seed(7)
    up, down = torch.randn(50, 10, generator=g), torch.randn(10, 70, generator=g)
    u2, d2 = A.lowrank_truncate(up, down, 4)
    assert rel(u2 @ d2, best(up @ down, 4)) <= 1e-6


# dynamic ranks: kohya's resize_lora.py semantics on hand-made spectra --------------------------

def spectrum_module(s, out=20, inp=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(out, len(s), generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(inp, len(s), generator=g, dtype=torch.float64)).Q
    return {"lora_up.weight": u * torch.tensor(s, dtype=torch.float64), "lora_down.weight": v.T,
            "alpha": torch.tensor(float(len(s)))}


@pytest.mark.parametrize("s, dyn, cap, want", [
    ([8, 4, 2, 1, 0.5], "sv_ratio:4", 5, 2),  # σ > 8/4 = 2, strictly: {8, 4}
    ([8, 4, 2, 1, 0.5], "sv_ratio:4.1", 5, 3),
    ([8, 4, 2, 1, 0.5], "sv_ratio:1", 5, 1),
    ([8, 4, 2, 1, 0.5], "sv_ratio:1000", 5, 5),
    ([4, 2, 1, 1], "sv_cumulative:0.5", 4, 1),  # cumulative shares 0.5, 0.75, 0.875, 1
    ([4, 2, 1, 1], "sv_cumulative:0.75", 4, 2),  # reaching the share exactly is enough
    ([4, 2, 1, 1], "sv_cumulative:0.76", 4, 3),
    ([4, 2, 1, 1], "sv_cumulative:1", 4, 4),
    ([4, 2, 1, 1], "sv_cumulative:1", 2, 2),  # capped
    ([3, 2, 1, 1, 1], "sv_fro:0.75", 5, 1),  # energy shares 9/16, 13/16, 14/16, 15/16, 1 vs X²
    ([3, 2, 1, 1, 1], "sv_fro:0.9", 5, 2),  # 0.81 ≤ 13/16
    ([3, 2, 1, 1, 1], "sv_fro:0.95", 5, 4),  # 0.9025: 14/16 short, 15/16 enough
    ([3, 2, 1, 1, 1], "sv_fro:1", 3, 3),
])
def test_dynamic_methods_pick_the_documented_ranks(s, dyn, cap, want):
    assert pick_rank(torch.tensor(s, dtype=torch.float64), cap, Dynamic.parse(dyn)) == want
    out, info = A.resize_module(spectrum_module(s), cap if cap < len(s) else None, Dynamic.parse(dyn))
    assert info.new_rank == want and out["lora_down.weight"].shape[0] == want
    assert float(out["alpha"]) == want  # source alpha = rank: scale 1 kept


def test_dynamic_edge_cases():
    assert pick_rank(torch.zeros(4), 4, Dynamic("sv_fro", 0.9)) == 1  # a zero update keeps rank 1
    assert pick_rank(torch.tensor([5.0, 1.0]), 8) == 2  # a fixed rank never exceeds the spectrum
    # with a truncated spectrum, the totals over the full one decide
    assert pick_rank(torch.tensor([3.0, 2.0]), 2, Dynamic("sv_fro", 0.75), total_sq=16.0) == 1
    assert pick_rank(torch.tensor([3.0, 2.0]), 2, Dynamic("sv_fro", 0.95), total_sq=16.0) == 2
    for bad in ("sv_fro", "sv_fro:x", "nope:0.5", "sv_fro:1.5", "sv_ratio:0.5", "sv_cumulative:0"):
        with pytest.raises(LoraKitError):
            Dynamic.parse(bad)
    z = {"lora_up.weight": torch.zeros(6, 3), "lora_down.weight": torch.randn(3, 5), "alpha": torch.tensor(3.0)}
    out, _ = A.resize_module(z, 2)
    assert out["lora_down.weight"].shape[0] == 1 and float(out["lora_up.weight"].abs().max()) == 0  # kohya: rank 1
    zero_alpha = dict(make_module(6, 5, 3), alpha=torch.tensor(0.0))
    out, _ = A.resize_module(zero_alpha, 2)
    assert torch.isfinite(out["lora_up.weight"]).all() and float(delta(out).abs().max()) == 0


# extraction --------------------------------------------------------------------------------

def planted(m, n, r, noise=0.0, seed=0, decay=0.8):
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, r, generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, r, generator=g)).Q
    s = decay ** torch.arange(r, dtype=torch.float32)
    return (u * s) @ v.T + noise * torch.randn(m, n, generator=g) / (m * n) ** 0.5


@pytest.mark.parametrize("exact", [False, True])
def test_extract_recovers_a_planted_low_rank_delta(exact):
    d = planted(300, 500, 12)
    mod, info = A.extract_module(d, 12, exact=exact)
    assert info.exact is exact and info.rank == 12 and float(mod["alpha"]) == 12
    assert rel(delta(mod), d) <= 1e-4 and info.relative_error <= 1e-4


def test_extract_with_noise_is_within_one_percent_of_optimal():
    d = planted(400, 640, 24, noise=0.3, seed=1)
    opt = float((d.double() - best(d, 16)).norm())
    mod, info = A.extract_module(d, 16)
    assert not info.exact
    err = float((d.double() - delta(mod)).norm())
    assert err <= 1.01 * opt
    assert info.error_sq ** 0.5 == pytest.approx(err, rel=1e-4)


def test_extract_conv_and_dynamic():
    d = planted(64, 9 * 40, 10, noise=0.01, seed=2).reshape(64, 40, 3, 3)
    mod, info = A.extract_module(d, 6)
    assert mod["lora_down.weight"].shape == (6, 40, 3, 3) and mod["lora_up.weight"].shape == (64, 6, 1, 1)
    assert rel(delta(mod), best(d, 6)) <= 1e-4
    # randomized (capped) and exact (whole spectrum) agree on the dynamic rank
    big = planted(400, 300, 30, seed=3, decay=0.7)
    for dyn in ("sv_fro:0.99", "sv_ratio:20", "sv_cumulative:0.95"):
        _, fast = A.extract_module(big, 40, Dynamic.parse(dyn), exact=False)
        _, slow = A.extract_module(big, None, Dynamic.parse(dyn))
        assert fast.rank == slow.rank < 30, dyn


def test_extract_clamp_matches_kohya_quantile_rule():
    d = planted(80, 60, 8, noise=0.1, seed=4)
    mod, info = A.extract_module(d, 8, clamp_quantile=0.9)
    raw, _ = A.extract_module(d, 8)
    vals = torch.cat([raw["lora_up.weight"].flatten(), raw["lora_down.weight"].flatten()])
    hi = float(torch.quantile(vals, 0.9))
    assert float(mod["lora_up.weight"].max()) <= hi + 1e-6 and float(mod["lora_down.weight"].min()) >= -hi - 1e-6
    assert info.error_sq ** 0.5 == pytest.approx(float((d.double() - delta(mod)).norm()), rel=1e-4)
