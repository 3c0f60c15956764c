"""LyCORIS files (LoHa, LoKr, Tucker LoCon, DoRA, full diff) written, read back and merged:
each layer's change equals a ΔW computed here by hand (einsum / explicit Kronecker blocks),
independently of lorakit.lora.functional."""

import copy
import json

import pytest
import torch

from lorakit.formats import load_lora, load_network, save_lora

from conftest import parts_of

B = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_"
LOHA, LOHA_CONV = B + "attn1_to_q", "lora_unet_down_blocks_0_resnets_0_conv1"
LOKR, LOKR_TE, LOKR_CONV = B + "ff_net_0_proj", "lora_te_text_model_encoder_layers_0_mlp_fc1", \
    "lora_unet_down_blocks_0_resnets_1_conv1"
TUCKER = "lora_unet_down_blocks_0_resnets_1_conv2"
DORA_OUT, DORA_IN = B + "attn1_to_k", B + "attn1_to_v"
FULL = B + "attn2_to_q"


def _kron_blocks(w1, w2):
    """kron(w1, w2) written as blocks: out[i*p + a, j*q + b, ...] = w1[i, j] * w2[a, b, ...]."""
    p, q = w2.shape[:2]
    out = torch.zeros(w1.shape[0] * p, w1.shape[1] * q, *w2.shape[2:])
    for i in range(w1.shape[0]):
        for j in range(w1.shape[1]):
            out[i * p:(i + 1) * p, j * q:(j + 1) * q] = w1[i, j] * w2
    return out


def _build(weights):
    """Modules of every kind on real layers of the tiny SD1 model, and ΔW for each by hand."""
    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    mods, hand = {}, {}
    # LoHa, linear 32→32, rank 4, alpha 2: (w1a·w1b) ⊙ (w2a·w2b) · alpha/r
    t = {"hada_w1_a": r(32, 4), "hada_w1_b": r(4, 32), "hada_w2_a": r(32, 4), "hada_w2_b": r(4, 32),
         "alpha": torch.tensor(2.0)}
    mods[LOHA] = t
    hand[LOHA] = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * (2.0 / 4)
    # LoHa with Tucker cores on a 3x3 conv 32→32, rank 3, alpha 1.5
    t = {"hada_t1": r(3, 3, 3, 3), "hada_w1_a": r(3, 32), "hada_w1_b": r(3, 32),
         "hada_t2": r(3, 3, 3, 3), "hada_w2_a": r(3, 32), "hada_w2_b": r(3, 32), "alpha": torch.tensor(1.5)}
    mods[LOHA_CONV] = t
    a = torch.einsum("pqkl,po,qi->oikl", t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"])
    b = torch.einsum("pqkl,po,qi->oikl", t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
    hand[LOHA_CONV] = a * b * (1.5 / 3)
    # LoKr, linear 32→256: w1 full 16x4, w2 = w2a·w2b (16x8, rank 2), alpha 1
    t = {"lokr_w1": r(16, 4), "lokr_w2_a": r(16, 2), "lokr_w2_b": r(2, 8), "alpha": torch.tensor(1.0)}
    mods[LOKR] = t
    hand[LOKR] = _kron_blocks(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"]) * (1.0 / 2)
    # LoKr on the text encoder, fc1 32→64: w1 = w1a·w1b (8x4, rank 2), w2 full 8x8, alpha 4
    t = {"lokr_w1_a": r(8, 2), "lokr_w1_b": r(2, 4), "lokr_w2": r(8, 8), "alpha": torch.tensor(4.0)}
    mods[LOKR_TE] = t
    hand[LOKR_TE] = _kron_blocks(t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w2"]) * (4.0 / 2)
    # LoKr on a 3x3 conv 32→32: w1 4x4 full, w2 = w2a·w2b reshaped to 8x8x3x3 (rank 3), alpha 3
    t = {"lokr_w1": r(4, 4), "lokr_w2_a": r(8, 3), "lokr_w2_b": r(3, 8 * 9), "alpha": torch.tensor(3.0)}
    mods[LOKR_CONV] = t
    hand[LOKR_CONV] = _kron_blocks(t["lokr_w1"], (t["lokr_w2_a"] @ t["lokr_w2_b"]).reshape(8, 8, 3, 3)) * (3.0 / 3)
    # Tucker LoCon: 1x1 down (rank 4), 3x3 mid core, 1x1 up, alpha 2
    t = {"lora_down.weight": r(4, 32, 1, 1), "lora_mid.weight": r(4, 4, 3, 3), "lora_up.weight": r(32, 4, 1, 1),
         "alpha": torch.tensor(2.0)}
    mods[TUCKER] = t
    hand[TUCKER] = torch.einsum("oa,abkl,bi->oikl", t["lora_up.weight"][:, :, 0, 0], t["lora_mid.weight"],
                                t["lora_down.weight"][:, :, 0, 0]) * (2.0 / 4)
    # DoRA: W' = m ⊙ (W + ΔW) / ‖W + ΔW‖, norm per output row (LyCORIS wd_on_out, m [out, 1]) …
    for name, scale_shape, dim in ((DORA_OUT, (32, 1), 1), (DORA_IN, (1, 32), 0)):  # … or per input column
        t = {"lora_down.weight": r(4, 32), "lora_up.weight": r(32, 4), "alpha": torch.tensor(4.0),
             "dora_scale": r(*scale_shape).abs() + 0.5}
        mods[name] = t
        w = weights[name]
        merged = w + t["lora_up.weight"] @ t["lora_down.weight"]
        hand[name] = t["dora_scale"] * merged / merged.norm(dim=dim, keepdim=True) - w
    # a full-weight difference
    mods[FULL] = {"diff": r(32, 32)}
    hand[FULL] = mods[FULL]["diff"].clone()
    return mods, hand


def test_lycoris_files_merge_to_hand_computed_deltas(tiny_sd1, tmp_path):
    pipe = copy.deepcopy(tiny_sd1)
    parts = parts_of(pipe, "sd1")
    index = parts.index()
    w0 = {name: index[name].module.weight.detach().clone() for name in index}
    mods, hand = _build(w0)
    path = tmp_path / "lyco.safetensors"
    save_lora(path, mods, dtype=torch.float32)

    lf = load_lora(path)
    assert lf.format == "lycoris" and len(lf) == 9
    for name, tensors in mods.items():
        assert set(lf.modules[name]) == set(tensors), name
        for sub, value in tensors.items():
            assert torch.equal(lf.modules[name][sub], value.float()), (name, sub)
    md = lf.metadata
    assert md["ss_network_module"] == "lycoris.kohya"
    args = json.loads(md["ss_network_args"])
    assert args["algo"] == "loha" and args["use_tucker"] == "True" and args["dora_wd"] == "True"
    assert lf.ranks()[LOHA] == 4 and lf.ranks()[LOKR] == 2 and lf.ranks()[FULL] is None

    net = load_network(parts, path)
    net.merge()
    for name, delta in hand.items():
        got = index[name].module.weight.detach() - w0[name]
        err = float((got - delta).norm() / delta.norm())
        assert err <= 1e-5, (name, err)
    net.unmerge()  # fp32 layers are unmerged by subtraction: back within float rounding
    for name in hand:
        assert (index[name].module.weight - w0[name]).abs().max() <= 1e-6, name


def test_lycoris_shape_mismatch_is_an_error(tiny_sd1, tmp_path):
    from lorakit.errors import LoraKitError

    parts = parts_of(copy.deepcopy(tiny_sd1), "sd1")
    bad = {LOKR: {"lokr_w1": torch.zeros(16, 4), "lokr_w2": torch.zeros(16, 9)}}  # kron is 256x36, layer 256x32
    save_lora(tmp_path / "bad.safetensors", bad)
    with pytest.raises(LoraKitError, match="do not fit the layer"):
        load_network(parts, tmp_path / "bad.safetensors")
