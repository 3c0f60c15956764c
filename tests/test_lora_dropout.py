"""kohya's three dropouts (sd-scripts networks/lora.py LoRAModule.forward) on every layer kind:
`dropout` on single entries of down(x), `rank_dropout` one (sample, rank) mask for every token or
pixel scaled by 1/(1-p), `module_dropout` the whole branch skipped; on SD 3.x/Flux fused layers
one down(x) and one draw of each for the whole layer, however many pieces diffusers holds."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.lora import LoRAModule, LoRANetwork
from lorakit.lora import modules as lora_modules

sys.path.insert(0, str(Path(__file__).parent))


def _identity_up(base, rank, **dropouts):
    """A LoRA whose up is the identity (out = rank): its output is down(x) as the dropouts left it."""
    torch.manual_seed(0)
    lora = LoRAModule(base, rank=rank, alpha=rank / 2, **dropouts)
    with torch.no_grad():
        lora.lora_up.weight.copy_(torch.eye(rank).reshape(lora.lora_up.weight.shape))
    return lora.train()


def _kept(lora, x):
    """out / (scale·down(x)): 0 where dropped, 1/(1-p) where kept (rank dropout's rescale folded in)."""
    with torch.no_grad():
        out = lora(x)
        full = F.linear(x, lora.lora_down.weight) if lora.kind == "linear" else lora.lora_down(x)
    return out / (full * lora.scale)


def _only_dropped_or_rescaled(kept, p):
    """Every entry 0 (dropped) or 1/(1-p) (kept), and both occur."""
    zero, rescaled = kept.abs() < 1e-4, (kept - 1 / (1 - p)).abs() < 1e-4
    return bool((zero | rescaled).all() and zero.any() and rescaled.any())


def test_rank_dropout_on_a_linear_is_one_mask_per_sample_for_every_token():
    lora = _identity_up(nn.Linear(8, 6), 6, rank_dropout=0.5)
    torch.manual_seed(1)
    kept = _kept(lora, torch.randn(4, 10, 8))  # batch 4, 10 tokens
    assert _only_dropped_or_rescaled(kept, 0.5)
    mask = kept > 0.5  # [batch, token, rank]
    assert torch.equal(mask, mask[:, :1].expand_as(mask)), "a rank is dropped for every token of a sample or none"
    assert not all(torch.equal(mask[0, 0], mask[b, 0]) for b in range(4)), "each sample draws its own mask"


def test_rank_dropout_on_a_conv_is_one_mask_per_sample_for_every_pixel():
    lora = _identity_up(nn.Conv2d(3, 5, 3, padding=1), 5, rank_dropout=0.4)
    torch.manual_seed(2)
    kept = _kept(lora, torch.randn(4, 3, 6, 6))
    assert _only_dropped_or_rescaled(kept, 0.4)
    mask = kept > 0.5  # [batch, rank, h, w]
    assert torch.equal(mask, mask[:, :, :1, :1].expand_as(mask))
    assert not all(torch.equal(mask[0, :, 0, 0], mask[b, :, 0, 0]) for b in range(4))


@pytest.mark.parametrize("base,shape", [(nn.Linear(8, 6), (4, 10, 8)), (nn.Conv2d(3, 6, 3, padding=1), (4, 3, 6, 6))])
def test_dropout_drops_single_entries_and_rescales(base, shape):
    lora = _identity_up(base, 6, dropout=0.25)
    torch.manual_seed(3)
    kept = _kept(lora, torch.randn(*shape))
    assert _only_dropped_or_rescaled(kept, 0.25)
    dropped = kept.abs() < 0.5
    assert 0.15 < float(dropped.float().mean()) < 0.35
    rank_axis = -1 if isinstance(base, nn.Linear) else 1
    per_rank = dropped.movedim(rank_axis, -1).reshape(-1, 6)
    assert not torch.equal(per_rank, per_rank[:1].expand_as(per_rank))  # entries, not whole ranks


@pytest.mark.parametrize("base,shape", [(nn.Linear(8, 6), (2, 5, 8)), (nn.Conv2d(3, 6, 3, padding=1), (2, 3, 4, 4))])
def test_module_dropout_skips_the_whole_branch(base, shape):
    lora = _identity_up(base, 6, module_dropout=0.5)
    x = torch.randn(*shape)
    torch.manual_seed(4)
    skipped = 0
    for _ in range(40):
        kept = _kept(lora, x)
        skip = bool((kept.abs() < 1e-4).all())
        assert skip or torch.allclose(kept, torch.ones_like(kept), atol=1e-4)
        skipped += int(skip)
    assert 8 <= skipped <= 32
    lora.eval()
    assert torch.allclose(_kept(lora, x), torch.ones(1), atol=1e-4)  # never at inference


# ---- SD 3.x / Flux.1 fused layers -------------------------------------------------------------

@pytest.fixture(scope="module", params=["sd3", "flux"])
def fused(request):
    if request.param == "sd3":
        from sd3_support import sd3_parts, tiny_sd3_pipeline

        return tiny_sd3_pipeline(), sd3_parts, "lora_unet_joint_blocks_0_x_block_attn_qkv"
    from flux_support import flux_parts, tiny_flux_pipeline

    return tiny_flux_pipeline(), flux_parts, "lora_unet_single_blocks_0_linear1"


def _fused_network(fused, **dropouts):
    pipe, make_parts, name = fused
    pipe = copy.deepcopy(pipe)
    net = LoRANetwork.create(make_parts(pipe), rank=4, alpha=2, text_encoder=False, **dropouts)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    target = net.targets[name]
    return net.train().apply(), target, net.adapters[name]


def _pieces(target, x):
    """Each diffusers piece called on the same input, as attention calls to_q, to_k, to_v."""
    return [layer(x) for layer, _ in target.pieces]


def _one_fused_draw(adapter, x, rows, p_module, p, p_rank):
    """The branch of the fused layer by hand, with one draw of each dropout in kohya's order."""
    if p_module and torch.rand(1) < p_module:
        return torch.zeros(x.shape[:-1] + (len(rows),))
    h = x @ adapter.lora_down.weight.T
    if p:
        h = F.dropout(h, p=p)
    scale = adapter.scale
    if p_rank:
        h = h * (torch.rand(x.shape[0], adapter.rank) > p_rank)[:, None, :]
        scale /= 1 - p_rank
    return (h @ adapter.lora_up.weight.T * scale)[..., rows]


@pytest.mark.parametrize("dropouts", [dict(dropout=0.3), dict(rank_dropout=0.5), dict(module_dropout=0.5),
                                      dict(dropout=0.2, rank_dropout=0.3, module_dropout=0.3)],
                         ids=["dropout", "rank", "module", "all"])
def test_fused_layer_draws_once_for_all_its_pieces(fused, dropouts):
    net, target, adapter = _fused_network(fused, **dropouts)
    x = torch.randn(3, 7, target.module.in_features, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        net.remove()
        base = _pieces(target, x)
        net.apply()
        rows = torch.cat([r for _, r in target.pieces])
        skipped = 0
        for seed in range(8):
            torch.manual_seed(seed)
            got = torch.cat([o - b for o, b in zip(_pieces(target, x), base)], -1)
            torch.manual_seed(seed)
            hand = _one_fused_draw(adapter, x, rows, dropouts.get("module_dropout", 0), dropouts.get("dropout", 0),
                                   dropouts.get("rank_dropout", 0))
            assert torch.allclose(got, hand, atol=1e-5), seed
            skipped += int(not hand.any())
        if dropouts.get("module_dropout"):
            assert 0 < skipped < 8  # both outcomes seen, for every piece at once


def test_fused_layer_computes_down_once(fused, monkeypatch):
    net, target, adapter = _fused_network(fused, dropout=0.1)
    calls = []
    real = lora_modules._run_in
    monkeypatch.setattr(lora_modules, "_run_in",
                        lambda layer, x: calls.append(layer is adapter.lora_down) or real(layer, x))
    x = torch.randn(2, 5, target.module.in_features)
    _pieces(target, x)
    _pieces(target, x)  # the next call of the fused layer (same input): a fresh down(x) and draw
    assert sum(calls) == 2 and len(target.pieces) > 1
    out = torch.cat(_pieces(target, x), -1).sum()
    out.backward()  # gradients reach the factors through the shared down(x)
    assert adapter.lora_down.weight.grad is not None and adapter.lora_down.weight.grad.abs().sum() > 0
