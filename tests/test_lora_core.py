"""The LoRA math against hand computations; merge/unmerge exactness; on-the-fly == merged."""

import copy

import pytest
import torch
from torch import nn

from lorakit.lora import LoRAModule, LoRANetwork, ModelParts, select
from lorakit.lora import functional as LF
from lorakit.models.tiny import tiny_pipeline

from conftest import parts_of


def _randomize(net: LoRANetwork, seed: int = 0, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def test_linear_lora_matches_hand_math():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    lora = LoRAModule(base, rank=3, alpha=1.5)
    nn.init.normal_(lora.lora_up.weight)
    x = torch.randn(4, 12)
    A, B = lora.lora_down.weight, lora.lora_up.weight  # A: r×k, B: d×r
    expected = base(x) + 0.7 * (1.5 / 3) * (x @ A.T @ B.T)
    lora.multiplier = 0.7
    got = base(x) + lora(x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(lora.delta_weight(), (1.5 / 3) * B @ A, atol=1e-7)


def test_init_is_kaiming_down_zero_up():
    lora = LoRAModule(nn.Linear(64, 32), rank=8)
    assert torch.count_nonzero(lora.lora_up.weight) == 0
    bound = 1 / 64 ** 0.5  # kaiming_uniform(a=sqrt(5)) bound for fan_in 64
    w = lora.lora_down.weight
    assert w.abs().max() <= bound + 1e-7 and w.std() > bound / 3
    assert float(lora.alpha) == 8.0  # missing alpha means alpha = rank


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (5, 2, 2)])
def test_conv_lora_composes_into_one_conv(kernel, stride, padding):
    torch.manual_seed(1)
    base = nn.Conv2d(6, 8, kernel, stride=stride, padding=padding)
    lora = LoRAModule(base, rank=4, alpha=2.0)
    assert lora.lora_down.stride == base.stride and lora.lora_down.padding == base.padding
    assert lora.lora_up.kernel_size == (1, 1)
    nn.init.normal_(lora.lora_up.weight)
    x = torch.randn(2, 6, 11, 11)
    on_the_fly = base(x) + lora(x)
    merged = nn.functional.conv2d(x, base.weight + lora.delta_weight(), base.bias, stride, padding)
    assert torch.allclose(on_the_fly, merged, atol=1e-5)


def test_lycoris_deltas_by_hand():
    torch.manual_seed(2)
    w1a, w1b, w2a, w2b = torch.randn(6, 2), torch.randn(2, 5), torch.randn(6, 2), torch.randn(2, 5)
    loha = LF.loha_delta(w1a, w1b, w2a, w2b, alpha=1.0, shape=(6, 5))
    assert torch.allclose(loha, (w1a @ w1b) * (w2a @ w2b) * 0.5, atol=1e-6)
    w1, w2 = torch.randn(2, 3), torch.randn(3, 4)
    lokr = LF.lokr_delta(w1, None, None, w2, None, None, alpha=None, shape=(6, 12))
    manual = torch.zeros(6, 12)
    for i in range(2):
        for j in range(3):
            manual[i * 3:(i + 1) * 3, j * 4:(j + 1) * 4] = w1[i, j] * w2
    assert torch.allclose(lokr, manual, atol=1e-6)


def test_tiny_network_preset_counts():
    pipe = tiny_pipeline("sd1")
    parts = parts_of(pipe, "sd1")
    # tiny sd1: 6 transformer blocks (10 linears + proj_in/out each), 2 TE layers (6 each)
    assert len(select(parts, "transformer")) == 6 * 12 + 2 * 6
    assert len(select(parts, "attn")) == 6 * 8 + 2 * 4
    assert len(select(parts, "cross-attn")) == 6 * 4 + 2 * 4
    full = LoRANetwork.create(parts, rank=2, preset="full", conv_rank=2)
    resnet_convs = [n for n in full.adapters if "resnets" in n and ("conv1" in n or "conv2" in n)]
    assert resnet_convs and all(full.adapters[n].kind == "conv" for n in resnet_convs)
    # without a conv rank the kxk convs stay out, as in kohya
    assert not any("conv1" in n for n in LoRANetwork.create(parts, rank=2, preset="full").adapters)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_merge_unmerge_exact_and_equal_to_on_the_fly(family):
    pipe = tiny_pipeline(family)
    parts = parts_of(pipe, family)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    te_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    net = LoRANetwork.create(parts, rank=4, alpha=2.0, preset="full", conv_rank=2, multiplier=0.8)
    _randomize(net)
    sample = torch.randn(1, 4, 8, 8)
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ctx = pipe.text_encoder(ids)[0]
        if family == "sdxl":
            ctx = torch.cat([ctx, pipe.text_encoder_2(ids).last_hidden_state], -1)
            added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[32., 32, 0, 0, 32, 32]])}
        else:
            added = None

        def run():
            return pipe.unet(sample, 10, encoder_hidden_states=ctx, added_cond_kwargs=added).sample

        plain = run()
        net.apply()
        fly = run()
        te_fly = pipe.text_encoder(ids)[0]
        net.remove()
        net.merge()
        merged = run()
        te_merged = pipe.text_encoder(ids)[0]
        net.unmerge()
        back = run()
    assert (fly - plain).abs().max() > 1e-3  # the LoRA does something
    assert torch.allclose(fly, merged, atol=1e-5, rtol=1e-4)
    assert torch.allclose(te_fly, te_merged, atol=1e-5, rtol=1e-4)
    assert (back - plain).abs().max() <= 1e-5
    for k, v in pipe.unet.state_dict().items():
        assert (v - before[k]).abs().max() <= 1e-6, k
    for k, v in pipe.text_encoder.state_dict().items():
        assert (v - te_before[k]).abs().max() <= 1e-6, k


def test_two_networks_strengths_and_partial_unmerge(tiny_sd1):
    pipe = copy.deepcopy(tiny_sd1)
    parts = parts_of(pipe, "sd1")
    a = LoRANetwork.create(parts, rank=4, preset="attn", multiplier=0.5)
    b = LoRANetwork.create(parts, rank=2, preset="cross-attn", multiplier=-1.25)
    _randomize(a, 1)
    _randomize(b, 2)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    layer = a.targets[name].module
    w0 = layer.weight.detach().clone()
    a.merge()
    b.merge()
    expected = w0 + 0.5 * a.adapters[name].delta_weight() - 1.25 * b.adapters[name].delta_weight()
    assert torch.allclose(layer.weight, expected, atol=1e-6)
    a.unmerge()  # b stays merged
    assert torch.allclose(layer.weight, w0 - 1.25 * b.adapters[name].delta_weight(), atol=1e-6)
    b.multiplier = 0.25  # re-merges at the new strength
    assert torch.allclose(layer.weight, w0 + 0.25 * b.adapters[name].delta_weight(), atol=1e-6)
    b.unmerge()
    assert (layer.weight - w0).abs().max() <= 1e-6
    assert not hasattr(layer, "_lorakit_merge")


def test_bypassed_gives_the_base_and_then_the_adapters_back(tiny_sd1):
    pipe = copy.deepcopy(tiny_sd1)
    net = LoRANetwork.create(parts_of(pipe, "sd1"), rank=4, preset="attn")
    _randomize(net, 3)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    layer = net.targets[name].module
    x = torch.randn(2, 5, layer.in_features)
    base = layer(x)
    net.apply()
    with_lora = layer(x)
    hand = base + x @ net.adapters[name].delta_weight().T
    assert torch.allclose(with_lora, hand, atol=1e-5) and not torch.allclose(with_lora, base, atol=1e-3)
    with net.bypassed():
        assert torch.equal(layer(x), base)
    assert torch.equal(layer(x), with_lora)
    net.merge()
    with pytest.raises(RuntimeError, match="merged"), net.bypassed():
        pass


def test_fp16_model_merges_in_fp32_and_unmerges_bit_exact():
    torch.manual_seed(3)
    base = nn.Linear(64, 64).half()
    parts = ModelParts("sd1", None, [])
    from lorakit.lora.targets import Target

    net = LoRANetwork()
    lora = LoRAModule(nn.Linear(64, 64), rank=8)
    nn.init.normal_(lora.lora_up.weight, std=0.01)
    net.add(Target("lora_te_x", "x", "te", base, ""), lora)
    w0 = base.weight.detach().clone()
    net.merge()
    expected = (w0.float() + lora.delta_weight()).half()
    assert torch.equal(base.weight, expected)
    net.unmerge()
    assert torch.equal(base.weight, w0)
    del parts
