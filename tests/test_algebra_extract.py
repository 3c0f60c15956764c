"""Extraction from two loaded models: planted updates come back, the text-encoder rule, bad pairs."""

import copy

import pytest
import torch

from lorakit.errors import LoraKitError
from lorakit.ops.extract import extract_parts
from lorakit.lora import functional as LF
from lorakit.lora import select
from lorakit.lora.ranks import Dynamic
from lorakit.models.tiny import tiny_pipeline

from conftest import parts_of


def plant(parts, rank, noise=0.0, seed=0, unet=True, te=False, preset="transformer"):
    """Add a rank-`rank` update (plus optional noise) to every targeted layer; return the updates."""
    g = torch.Generator().manual_seed(seed)
    planted = {}
    with torch.no_grad():
        for t in select(parts, preset, unet=unet, text_encoder=te):
            w = t.module.weight
            a = w.reshape(w.shape[0], -1)
            m, n = a.shape
            d = torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g) * 0.02
            d += noise * torch.randn(m, n, generator=g) * 0.02
            w.add_(d.reshape(w.shape))
            planted[t.name] = d.reshape(w.shape)
    return planted


@pytest.fixture(scope="module")
def base():
    return tiny_pipeline("sd1")


def test_extract_recovers_planted_updates_unet_only(base):
    tuned = copy.deepcopy(base)
    planted = plant(parts_of(tuned, "sd1"), 3)
    res = extract_parts(parts_of(base, "sd1"), parts_of(tuned, "sd1"), rank=3)
    assert set(res.modules) == set(planted)
    assert res.parts["unet"].relative_error <= 1e-4
    assert not res.parts["te"].extracted and "not extracted" in res.parts["te"].describe(0.01)
    for name, d in planted.items():
        m = res.modules[name]
        got = LF.lora_delta(m["lora_up.weight"], m["lora_down.weight"], float(m["alpha"]), d.shape)
        assert float((got - d).norm() / d.norm()) <= 1e-4


def test_extract_includes_the_text_encoder_when_it_differs_and_skips_unchanged_layers(base):
    tuned = copy.deepcopy(base)
    planted = plant(parts_of(tuned, "sd1"), 2, te=True, unet=False)
    with torch.no_grad():  # one UNet layer changes, the rest stay identical
        t = select(parts_of(tuned, "sd1"), "transformer", text_encoder=False)[0]
        t.module.weight.add_(0.05)
    res = extract_parts(parts_of(base, "sd1"), parts_of(tuned, "sd1"), rank=4)
    te = res.parts["te"]
    assert te.extracted and te.modules == len(planted) and te.relative_error <= 1e-4
    assert res.parts["unet"].modules == 1 and res.parts["unet"].skipped > 0
    m = res.modules[t.name]
    got = LF.lora_delta(m["lora_up.weight"], m["lora_down.weight"], float(m["alpha"]), t.module.weight.shape)
    assert torch.allclose(got, torch.full_like(got, 0.05), atol=1e-5)


def test_extract_with_noise_near_optimal_and_conv_rank(base):
    tuned = copy.deepcopy(base)
    planted = plant(parts_of(tuned, "sd1"), 4, noise=0.3, preset="full")
    res = extract_parts(parts_of(base, "sd1"), parts_of(tuned, "sd1"), rank=4, conv_rank=2, exact=True)
    conv = [t for t in select(parts_of(base, "sd1"), "full") if t.is_conv3]
    assert conv and all(res.modules[t.name]["lora_down.weight"].shape[0] == 2 for t in conv)
    assert len(res.modules) == len(planted)
    opt_sq = tot_sq = 0.0
    for t in select(parts_of(base, "sd1"), "full", text_encoder=False):
        d = planted[t.name].reshape(planted[t.name].shape[0], -1).double()
        s = torch.linalg.svdvals(d)
        k = 2 if t.is_conv3 else 4
        opt_sq += float(s[k:].pow(2).sum())
        tot_sq += float(s.pow(2).sum())
    assert res.parts["unet"].relative_error <= 1.01 * (opt_sq / tot_sq) ** 0.5


def test_extract_dynamic_and_bad_inputs(base):
    tuned = copy.deepcopy(base)
    plant(parts_of(tuned, "sd1"), 2)
    res = extract_parts(parts_of(base, "sd1"), parts_of(tuned, "sd1"), rank=8, dynamic=Dynamic("sv_fro", 0.999))
    assert {m["lora_down.weight"].shape[0] for m in res.modules.values()} == {2}
    with pytest.raises(LoraKitError, match="at least 1"):
        extract_parts(parts_of(base, "sd1"), parts_of(tuned, "sd1"), rank=0)
    with pytest.raises(LoraKitError, match="does not differ"):
        extract_parts(parts_of(base, "sd1"), parts_of(base, "sd1"), rank=2)
    other = tiny_pipeline("sd2")
    with pytest.raises(LoraKitError, match="sd2 but the base is sd1"):
        extract_parts(parts_of(base, "sd1"), parts_of(other, "sd2"), rank=2)
    wider = parts_of(other, "sd2")
    wider.family = "sd1"  # same family label, different layers
    with pytest.raises(LoraKitError, match="architecture"):
        extract_parts(parts_of(base, "sd1"), wider, rank=2)
