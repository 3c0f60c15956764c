"""Several adapters on one layer, DoRA among them: merged, on the fly and unmerged, each equal to
applying them one after another by hand, DoRA's norm taken over the weight it lands on (the
earlier adapters' ΔW included), on Linear and Conv2d layers and on SD 3.x/Flux fused layers."""

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lorakit.lora import LoRANetwork, live

from conftest import parts_of

sys.path.insert(0, str(Path(__file__).parent))

LINEAR = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj"  # 32 → 256
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # 3×3, 32 → 32
MULTIPLIERS = (0.8, -0.6, 1.3, 0.5)


def _module(kind: str, shape: tuple, g: torch.Generator) -> tuple[dict, torch.Tensor]:
    """Tensors of one adapter of `kind` on a weight of `shape`, and its ΔW by hand (DoRA: before
    the rescaling, which `_apply` does)."""
    def r(*s):
        return torch.randn(*s, generator=g) * 0.2

    out, inp = shape[0], shape[1]
    k = shape[2:]
    flat = inp * (k[0] * k[1] if k else 1)
    if kind == "loha":
        t = {"hada_w1_a": r(out, 3), "hada_w1_b": r(3, flat), "hada_w2_a": r(out, 3), "hada_w2_b": r(3, flat),
             "alpha": torch.tensor(1.5)}
        return t, ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * 0.5).reshape(shape)
    if kind == "lokr":  # kron(w1 [4, 4], w2a·w2b [out/4, flat/4]), alpha/rank 2/2
        t = {"lokr_w1": r(4, 4), "lokr_w2_a": r(out // 4, 2), "lokr_w2_b": r(2, flat // 4), "alpha": torch.tensor(2.0)}
        w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
        blocks = torch.zeros(out, flat)
        p, q = w2.shape
        for i in range(4):
            for j in range(4):
                blocks[i * p:(i + 1) * p, j * q:(j + 1) * q] = t["lokr_w1"][i, j] * w2
        return t, blocks.reshape(shape)
    down = r(4, inp, *k)
    up = r(out, 4, *([1, 1] if k else []))
    t = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(2.0)}
    delta = (up.reshape(out, 4) @ down.reshape(4, flat) * 0.5).reshape(shape)
    if kind == "dora_in":  # one magnitude per input column (LyCORIS' default)
        t["dora_scale"] = r(1, inp, *([1] * len(k))).abs() + 0.5
    elif kind == "dora_out":  # one per output row (LyCORIS wd_on_out)
        t["dora_scale"] = r(out, *([1] * (len(shape) - 1))).abs() + 0.5
    return t, delta


def _apply(w: torch.Tensor, tensors: dict, delta: torch.Tensor, m: float) -> torch.Tensor:
    """One adapter applied by hand to the weight as it stands: W + m·ΔW, or for DoRA
    W + m·(s·(W+ΔW)/‖W+ΔW‖ − W), the norm over every axis but the one the magnitudes run along."""
    scale = tensors.get("dora_scale")
    if scale is None:
        return w + m * delta
    merged = w + delta
    keep = 0 if scale.shape[0] == w.shape[0] and scale.numel() == w.shape[0] else 1
    norm = torch.linalg.vector_norm(merged, dim=[d for d in range(w.dim()) if d != keep], keepdim=True)
    return w + m * (scale * merged / norm - w)


def _by_hand(w0, mods, multipliers):
    w = w0.clone()
    for (t, delta), m in zip(mods, multipliers):
        w = _apply(w, t, delta, m)
    return w


def _networks(parts, name, kinds, seed=0, multipliers=MULTIPLIERS):
    g = torch.Generator().manual_seed(seed)
    shape = tuple(parts.index()[name].module.weight.shape)
    mods = [_module(k, shape, g) for k in kinds]
    nets = [LoRANetwork.from_modules(parts, {name: t}, multiplier=m) for (t, _), m in zip(mods, multipliers)]
    return nets, mods


def _err(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


ORDERS = [("lora", "dora_in"), ("dora_in", "lora"), ("lora", "dora_out"), ("dora_out", "loha"),
          ("loha", "dora_in", "lokr", "dora_out"), ("dora_in", "dora_out", "lora")]


@pytest.mark.parametrize("name", [LINEAR, CONV])
@pytest.mark.parametrize("kinds", ORDERS, ids=["-".join(k) for k in ORDERS])
def test_any_order_merges_as_applied_one_after_another(tiny_sd1, name, kinds):
    pipe = copy.deepcopy(tiny_sd1)
    parts = parts_of(pipe, "sd1")
    layer = parts.index()[name].module
    w0 = layer.weight.detach().clone()
    nets, mods = _networks(parts, name, kinds)
    for net in nets:
        net.merge()
    assert _err(layer.weight, _by_hand(w0, mods, MULTIPLIERS)) <= 1e-5
    # the first network out: the weight the others alone give, in their order
    nets[0].unmerge()
    assert _err(layer.weight, _by_hand(w0, mods[1:], MULTIPLIERS[1:])) <= 1e-5
    nets[0].merge()  # now last
    rest = list(zip(mods, MULTIPLIERS))[1:] + [(mods[0], MULTIPLIERS[0])]
    assert _err(layer.weight, _by_hand(w0, [x for x, _ in rest], [m for _, m in rest])) <= 1e-5
    for net in reversed(nets):
        net.unmerge()
    assert (layer.weight - w0).abs().max() <= 1e-6  # fp32: within an ulp
    assert not hasattr(layer, "_lorakit_merge")


def _layer_output(layer, x):
    with torch.no_grad():
        return layer(x)


def _input(layer):
    g = torch.Generator().manual_seed(9)
    if isinstance(layer, nn.Conv2d):
        return torch.randn(2, layer.in_channels, 6, 6, generator=g)
    return torch.randn(2, 5, layer.in_features, generator=g)


def _with_weight(layer, x, w):
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, w, layer.bias)
    return nn.functional.linear(x, w, layer.bias)


@pytest.mark.parametrize("name", [LINEAR, CONV])
@pytest.mark.parametrize("kinds", ORDERS[:2] + ORDERS[4:5], ids=["-".join(k) for k in ORDERS[:2] + ORDERS[4:5]])
def test_on_the_fly_equals_merged_both_ways(tiny_sd1, monkeypatch, name, kinds):
    """The effective weight, and the branch beside a foreign forward (which keeps W untouched)."""
    pipe = copy.deepcopy(tiny_sd1)
    parts = parts_of(pipe, "sd1")
    layer = parts.index()[name].module
    x = _input(layer)
    w0 = layer.weight.detach().clone()
    nets, mods = _networks(parts, name, kinds, seed=1)
    hand = _with_weight(layer, x, _by_hand(w0, mods, MULTIPLIERS)).detach()
    for net in nets:
        net.apply()
    monkeypatch.setattr(live, "WEIGHT_SPACE_FACTOR", 0.0)
    assert _err(_layer_output(layer, x), hand) <= 1e-5
    for net in nets:
        net.remove()
    plain = layer.forward
    layer.forward = lambda inp: plain(inp)  # e.g. an offloading hook: the branch runs beside it
    for net in nets:
        net.apply()
    assert _err(_layer_output(layer, x), hand) <= 1e-5
    for net in nets:
        net.remove()
    del layer.forward
    for net in nets:
        net.merge()
    assert _err(_layer_output(layer, x), hand) <= 1e-5


def test_half_precision_unmerge_is_bit_exact_whatever_the_order(tiny_sd1):
    """bf16: each merge rounds once; taking one network out gives, bit for bit, what merging the
    others alone gives, and the last unmerge the original."""
    pipe = copy.deepcopy(tiny_sd1)
    pipe.unet.to(torch.bfloat16)
    parts = parts_of(pipe, "sd1")
    layer = parts.index()[LINEAR].module
    w0 = layer.weight.detach().clone()
    nets, mods = _networks(parts, LINEAR, ("lora", "dora_in", "loha"), seed=2)
    for net in nets[1:]:
        net.merge()
    alone = layer.weight.detach().clone()
    for net in reversed(nets[1:]):
        net.unmerge()
    assert torch.equal(layer.weight, w0)
    for net in nets:
        net.merge()
    assert _err(layer.weight.float(), _by_hand(w0.float(), mods, MULTIPLIERS).to(torch.bfloat16).float()) <= 2e-2
    nets[0].unmerge()
    assert torch.equal(layer.weight, alone)
    for net in nets[1:]:
        net.unmerge()
    assert torch.equal(layer.weight, w0)


def test_strength_change_keeps_the_order(tiny_sd1):
    """A new strength for a network merged before a DoRA: the DoRA still lands after it."""
    pipe = copy.deepcopy(tiny_sd1)
    parts = parts_of(pipe, "sd1")
    layer = parts.index()[LINEAR].module
    w0 = layer.weight.detach().clone()
    nets, mods = _networks(parts, LINEAR, ("lora", "dora_in"), seed=3)
    for net in nets:
        net.merge()
    nets[0].multiplier = 0.3
    assert _err(layer.weight, _by_hand(w0, mods, (0.3, MULTIPLIERS[1]))) <= 1e-5


# ---- SD 3.x / Flux.1 fused layers ------------------------------------------------------------

@pytest.fixture(scope="module", params=["sd3", "flux"])
def fused_world(request):
    if request.param == "sd3":
        from sd3_support import sd3_parts, tiny_sd3_pipeline

        return tiny_sd3_pipeline(), sd3_parts, "lora_unet_joint_blocks_0_x_block_attn_qkv"
    from flux_support import flux_parts, tiny_flux_pipeline

    return tiny_flux_pipeline(), flux_parts, "lora_unet_single_blocks_0_linear1"


FUSED_ORDERS = [("lora", "dora_in"), ("dora_in", "lora"), ("dora_out", "lokr", "dora_in")]


@pytest.mark.parametrize("kinds", FUSED_ORDERS, ids=["-".join(k) for k in FUSED_ORDERS])
def test_fused_layer_merges_and_runs_on_the_fly_as_the_whole_layer_by_hand(fused_world, monkeypatch, kinds):
    """qkv (SD3) / linear1 (Flux) are pieces in diffusers: a DoRA's norm across rows must see every
    piece's rows, so the by-hand reference works on the whole fused weight."""
    pipe, make_parts, name = fused_world
    pipe = copy.deepcopy(pipe)
    parts = make_parts(pipe)
    target = parts.index()[name]
    w0 = target.weight().detach().clone()
    nets, mods = _networks(parts, name, kinds, seed=4)
    hand = _by_hand(w0, mods, MULTIPLIERS)
    x = torch.randn(2, 3, w0.shape[1], generator=torch.Generator().manual_seed(5))

    def outputs():
        with torch.no_grad():
            return torch.cat([layer(x) - (0 if layer.bias is None else layer.bias) for layer, _ in target.pieces], -1)

    rows = torch.cat([r for _, r in target.pieces])
    expected = (x @ hand[rows].T)
    for net in nets:
        net.apply()
    monkeypatch.setattr(live, "WEIGHT_SPACE_FACTOR", 0.0)
    assert _err(outputs(), expected) <= 1e-5
    for net in nets:
        net.remove()
    for net in nets:
        net.merge()
    assert _err(target.weight(), hand) <= 1e-5
    assert _err(outputs(), expected) <= 1e-5
    for net in reversed(nets):
        net.unmerge()
    assert (target.weight() - w0).abs().max() <= 1e-6


# ---- the command line ---------------------------------------------------------------------------

def _dora_file(root, source, out, scale_shape=None):
    """A DoRA copy of a kohya file: its LoRA tensors and a magnitude per input column."""
    from lorakit.formats import load_lora, save_lora

    g = torch.Generator().manual_seed(7)
    mods = {}
    for name, t in load_lora(source).modules.items():
        t = dict(t)
        down = t["lora_down.weight"]
        shape = scale_shape or (1, down.shape[1], *([1] * (down.dim() - 2)))
        t["dora_scale"] = torch.rand(*shape, generator=g) + 0.5
        mods[name] = t
    save_lora(root / out, mods, {}, family="sd1", dtype=torch.float32)
    return root / out


def _unet_weight(folder, key):
    from safetensors.torch import load_file

    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")[key]


@pytest.mark.parametrize("dora_first", [False, True])
def test_cli_merge_of_a_lora_and_a_dora(tmp_path, dora_first):
    from conftest import tiny_model_with_lora
    from lorakit.cli import main
    from lorakit.formats import load_lora
    from lorakit.models import load_model

    root = tiny_model_with_lora(tmp_path, seed=1)
    dora = _dora_file(root, root / "a.safetensors", "d.safetensors")
    files = [f"{dora}:0.7", f"{root / 'a.safetensors'}:0.5"]
    if not dora_first:
        files.reverse()
    argv = ["merge", "--model", str(root / "model"), "--out", str(tmp_path / "out"), "--dtype", "fp32"]
    for f in files:
        argv += ["--lora", f]
    assert main(argv) == 0

    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"
    w0 = load_model(str(root / "model"), dtype=torch.float32, device="cpu").unet.state_dict()[key]
    mods = []
    for path, m in ((root / "a.safetensors", 0.5), (dora, 0.7)):
        t = {k: v.float() for k, v in load_lora(path).modules[name].items()}
        delta = t["lora_up.weight"] @ t["lora_down.weight"] * (float(t["alpha"]) / t["lora_down.weight"].shape[0])
        mods.append(((t, delta), m))
    if dora_first:
        mods.reverse()
    hand = _by_hand(w0, [x for x, _ in mods], [m for _, m in mods])
    assert _err(_unet_weight(tmp_path / "out", key), hand) <= 1e-5


def test_generate_attach_and_detach_a_lora_and_a_dora(tmp_path, monkeypatch):
    """What `generate` does in fp32: merged, then on the fly (same weights), then detached (the
    original weights back within an ulp, as fp32 unmerges promise)."""
    from conftest import tiny_model_with_lora
    from lorakit.generate import LoraSpec, attach_loras, detach_loras
    from lorakit.models import load_model

    root = tiny_model_with_lora(tmp_path, seed=2)
    dora = _dora_file(root, root / "a.safetensors", "d.safetensors")
    model = load_model(str(root / "model"), dtype=torch.float32, device="cpu")
    specs = [LoraSpec(root / "a.safetensors", 0.6), LoraSpec(dora, 0.9)]
    layers = {n: t.module for n, t in model.parts().index().items() if n.startswith("lora_unet")}
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    nets = attach_loras(model, specs, merge=True)
    merged = {n: m.weight.detach().clone() for n, m in layers.items()}
    detach_loras(nets)
    assert max(float((m.weight.detach() - before[n]).abs().max()) for n, m in layers.items()) <= 1e-6
    restored = {n: m.weight.detach().clone() for n, m in layers.items()}
    nets = attach_loras(model, specs, merge=False)
    monkeypatch.setattr(live, "WEIGHT_SPACE_FACTOR", 0.0)
    worst = 0.0
    for n, m in layers.items():
        if "_lorakit_live" in m.__dict__:
            w = live.effective_weight(m, m._lorakit_live.entries)
            worst = max(worst, _err(w, merged[n]))
    detach_loras(nets)
    assert worst <= 1e-6
    assert all(torch.equal(m.weight, restored[n]) for n, m in layers.items())  # on the fly: W untouched


def test_cli_refuses_a_dora_scale_that_fits_no_axis(tmp_path, capsys):
    from conftest import tiny_model_with_lora
    from lorakit.cli import main

    root = tiny_model_with_lora(tmp_path, seed=3)
    dora = _dora_file(root, root / "a.safetensors", "bad.safetensors", scale_shape=(3, 1))
    code = main(["merge", "--model", str(root / "model"), "--lora", str(root / "a.safetensors"), "--lora", str(dora),
                 "--out", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and "bad.safetensors" in errors[0] and "dora_scale (3, 1)" in errors[0], err
