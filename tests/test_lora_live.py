"""On the fly, per call: the branch or the effective weight W + ΔW, both exact, chosen by cost."""

import copy

import pytest
import torch
from torch import nn

from lorakit.lora import LoRAModule, LoRANetwork, live
from lorakit.lora.targets import Target

from conftest import parts_of


def _randomize(net: LoRANetwork, seed: int = 0, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _unet_run(pipe):
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ids = pipe.tokenizer(["a red circle", "a blue cross"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        ctx = pipe.text_encoder(ids)[0].to(pipe.unet.dtype)

    def run():
        with torch.no_grad():
            return pipe.unet(sample.to(pipe.unet.dtype), 10, encoder_hidden_states=ctx).sample

    return run


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_effective_weight_on_the_fly_equals_merged_bit_for_bit(tiny_sd1, monkeypatch, dtype):
    """Weight space everywhere: every layer computes with exactly the weight `merge` would write."""
    pipe = copy.deepcopy(tiny_sd1)
    pipe.unet.to(dtype)
    net = LoRANetwork.create(parts_of(pipe, "sd1"), rank=4, alpha=2.0, preset="full", conv_rank=2,
                             text_encoder=False, multiplier=0.8)
    _randomize(net)
    net.requires_grad_(False)
    run = _unet_run(pipe)
    plain = run()
    monkeypatch.setattr(live, "WEIGHT_SPACE_FACTOR", 0.0)
    net.apply()
    fly = run()
    net.remove()
    net.merge()
    merged = run()
    net.unmerge()
    assert (fly.float() - plain.float()).abs().max() > 1e-2  # the LoRA does something
    assert torch.equal(fly, merged)
    assert torch.allclose(run(), plain, atol=1e-5)  # fp32 unmerges by subtraction: within an ulp


def test_branch_and_effective_weight_agree_and_leave_the_base_alone(tiny_sd1, monkeypatch):
    pipe = copy.deepcopy(tiny_sd1)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    net = LoRANetwork.create(parts_of(pipe, "sd1"), rank=4, preset="full", conv_rank=2, text_encoder=False)
    _randomize(net, 2)
    net.requires_grad_(False)
    run = _unet_run(pipe)
    net.apply()
    monkeypatch.setattr(live, "WEIGHT_SPACE_FACTOR", float("inf"))
    branch = run()
    monkeypatch.setattr(live, "WEIGHT_SPACE_FACTOR", 0.0)
    weight = run()
    assert torch.allclose(branch, weight, atol=1e-5, rtol=1e-4)
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_training_takes_the_branch_so_gradients_reach_the_factors(tiny_sd1, monkeypatch):
    pipe = copy.deepcopy(tiny_sd1)
    net = LoRANetwork.create(parts_of(pipe, "sd1"), rank=4, preset="attn", text_encoder=False)
    _randomize(net, 3)
    monkeypatch.setattr(live, "WEIGHT_SPACE_FACTOR", 0.0)
    calls = []
    real = live.effective_weight
    monkeypatch.setattr(live, "effective_weight", lambda *a, **k: calls.append(1) or real(*a, **k))
    net.apply()
    sample = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 77, pipe.unet.config.cross_attention_dim)
    pipe.unet(sample, 10, encoder_hidden_states=ctx).sample.square().mean().backward()
    assert not calls
    ups = [a.lora_up.weight.grad for a in net.adapters.values()]
    assert all(g is not None for g in ups) and sum(g.abs().sum() for g in ups) > 0
    with torch.no_grad():  # sampling while training: no gradient, so the effective weight
        pipe.unet(sample, 10, encoder_hidden_states=ctx)
    assert len(calls) == len(net.adapters)


def _layer_with_lora(d, k, rank=32, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(k, d)
    lora = LoRAModule(base, rank=rank, alpha=rank / 2)
    nn.init.normal_(lora.lora_up.weight, std=0.02)
    lora.requires_grad_(False)
    net = LoRANetwork()
    net.add(Target("lora_unet_x", "x", "unet", base, ""), lora)
    return base, lora, net


@pytest.mark.parametrize("d,k,tokens,expected", [
    (320, 320, 8192, True),    # SD 1.5's 64×64 self-attention at batch 2: the branch costs 3× the weight
    (640, 640, 2048, True),
    (1280, 1280, 512, False),  # 16×16 level: ΔW's GEMM outweighs the branch
    (320, 768, 154, False),    # cross-attention k/v on two 77-token prompts
])
def test_cost_rule_picks_the_cheaper_way(d, k, tokens, expected):
    base, _, net = _layer_with_lora(d, k)
    net.apply()
    x = torch.randn(tokens, k)
    with torch.no_grad():
        assert live._weight_space_pays(base, x, base._lorakit_live) is expected


def test_delta_modules_always_use_the_effective_weight(monkeypatch):
    """A LoHa's branch would build the full ΔW and run a second GEMM of the base's size."""
    torch.manual_seed(4)
    base = nn.Linear(16, 12)
    t = {"hada_w1_a": torch.randn(12, 2), "hada_w1_b": torch.randn(2, 16), "hada_w2_a": torch.randn(12, 2),
         "hada_w2_b": torch.randn(2, 16), "alpha": torch.tensor(1.0)}
    from lorakit.lora.modules import DeltaModule

    adapter = DeltaModule(base, "loha", {k: v for k, v in t.items() if k != "alpha"}, 1.0)
    net = LoRANetwork(multiplier=0.6)
    net.add(Target("lora_unet_x", "x", "unet", base, ""), adapter)
    x = torch.randn(3, 16)
    with torch.no_grad():
        expected = base(x) + 0.6 * x @ adapter.delta_weight().T
        net.apply()
        assert live._weight_space_pays(base, x, base._lorakit_live)
        assert torch.allclose(base(x), expected, atol=1e-5)


def test_two_networks_on_one_layer_and_a_foreign_forward_kept():
    base, lora_a, net_a = _layer_with_lora(8, 6, rank=2, seed=5)
    lora_b = LoRAModule(base, rank=3)
    nn.init.normal_(lora_b.lora_up.weight, std=0.1)
    lora_b.requires_grad_(False)
    net_b = LoRANetwork(multiplier=-0.5)
    net_b.add(Target("lora_unet_x", "x", "unet", base, ""), lora_b)
    wrapped = []
    plain_forward = base.forward

    def foreign(x):  # e.g. accelerate's offload hook, installed per instance
        wrapped.append(1)
        return plain_forward(x)

    base.forward = foreign
    x = torch.randn(4, 6)
    with torch.no_grad():
        expected = x @ (base.weight + lora_a.delta_weight() - 0.5 * lora_b.delta_weight()).T + base.bias
        net_a.apply()
        net_b.apply()
        got = base(x)
        assert wrapped, "the foreign forward must still run"
        assert torch.allclose(got, expected, atol=1e-5)
        net_a.remove()
        assert torch.allclose(base(x), x @ (base.weight - 0.5 * lora_b.delta_weight()).T + base.bias, atol=1e-5)
        net_b.remove()
    assert base.forward is foreign and not hasattr(base, "_lorakit_live")
