"""SD 3.x LoRA names, math and file layouts on a tiny SD3 pipeline and real-size meta models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_support import meta_t5xxl, names_and_shapes, random_net, sd_scripts_names  # noqa: E402
from sd3_support import meta_clips, meta_transformer, sd3_parts, tiny_sd3_pipeline  # noqa: E402

from lorakit.families.sd3 import naming as sd3_naming  # noqa: E402
from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.formats import load_lora, load_network, save_lora  # noqa: E402
from lorakit.lora import LoRANetwork, ModelParts  # noqa: E402
from lorakit.lora import fused  # noqa: E402
from lorakit.lora.targets import select  # noqa: E402

LAYOUTS = ("kohya", "diffusers", "comfyui", "onetrainer")


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd3_pipeline()


def weights(pipe):
    out = {f"transformer.{k}": v.clone() for k, v in pipe.transformer.state_dict().items()}
    for i, te in enumerate((pipe.text_encoder, pipe.text_encoder_2), 1):
        out.update({f"te{i}.{k}": v.clone() for k, v in te.state_dict().items()})
    return out


def merged_weights(pipe, lora):
    """Weights with the LoRA merged; the pipeline is given back its exact weights afterwards."""
    saved = [m.state_dict() for m in (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2)]
    saved = [{k: v.clone() for k, v in s.items()} for s in saved]
    net = load_network(sd3_parts(pipe), lora)
    net.merge()
    try:
        return weights(pipe)
    finally:
        net.unmerge()
        for m, s in zip((pipe.transformer, pipe.text_encoder, pipe.text_encoder_2), saved):
            m.load_state_dict(s)


def test_row_map_inverts_diffusers_single_file_converter(pipe):
    """diffusers → SAI (lorakit's table) → diffusers (diffusers' own converter) is the identity."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    state = pipe.transformer.state_dict()
    sai = sd3_naming.diffusers_state_to_sai(state)
    assert "joint_blocks.0.x_block.attn.qkv.weight" in sai and "joint_blocks.0.x_block.attn2.qkv.weight" in sai
    assert "joint_blocks.2.context_block.attn.proj.weight" not in sai  # the last context stream ends at attention
    back = convert_sd3_transformer_checkpoint_to_diffusers(dict(sai))
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k]), k
    # the swapped adaLN really is swapped in SAI order: shift first
    d = pipe.transformer.transformer_blocks[2].norm1_context.linear.weight
    half = d.shape[0] // 2
    assert torch.equal(sai["joint_blocks.2.context_block.adaLN_modulation.1.weight"][:half], d[half:])


@pytest.mark.parametrize("name,unet,dual", [("sd35-large", 377, ()), ("sd35-medium", 263, range(13)),
                                          ("sd3-medium", 237, ())])
def test_kohya_names_of_real_size_architectures(name, unet, dual):
    """A network on the real-size architectures (meta device) names its modules as sd-scripts'
    networks/lora_sd3.py does: the names it gave the same models, recorded in tests/data."""
    tr = meta_transformer(name)
    clip_l, clip_g = meta_clips()
    parts = ModelParts("sd3", tr, [clip_l, clip_g, meta_t5xxl()], dict(tr.config))
    ours = names_and_shapes(select(parts, "transformer"))
    assert ours == sd_scripts_names(name)  # each name on the layer of the same shape as theirs
    names = list(ours)
    assert sum(n.startswith("lora_unet_") for n in names) == unet
    assert sum(n.startswith(("lora_te1_", "lora_te2_")) for n in names) == 264
    assert sum(n.startswith("lora_te3_") for n in names) == 168
    clip_only = [t.name for t in select(ModelParts("sd3", tr, [clip_l, clip_g], dict(tr.config)), "transformer")]
    assert sorted(clip_only) == sorted(n for n in names if not n.startswith("lora_te3_"))
    # the table other tests use agrees with sd-scripts too
    table = sd3_naming.default_kohya_names(tr.config.num_layers, tuple(dual))
    assert sorted(table) == sorted(n for n in names if not n.startswith("lora_te3_"))


def test_presets_select_attention_mlp_or_all_linear(pipe):
    parts = sd3_parts(pipe)
    attn = {t.name for t in select(parts, "attn", text_encoder=False)}
    attn_mlp = {t.name for t in select(parts, "attn-mlp", text_encoder=False)}
    every = {t.name for t in select(parts, "transformer", text_encoder=False)}
    assert all(n.endswith(("_qkv", "_proj")) for n in attn) and len(attn) == 3 * 4 - 1 + 2
    assert attn < attn_mlp < every
    assert attn_mlp - attn == {n for n in every if n.endswith(("_fc1", "_fc2"))}
    assert every - attn_mlp == {n for n in every if n.endswith("adaLN_modulation_1")}


def test_lora_math_by_hand_on_fused_and_swapped_layers(pipe):
    parts = sd3_parts(pipe)
    net = random_net(parts, rank=4, alpha=2.0)
    tr = pipe.transformer
    x = torch.randn(3, tr.transformer_blocks[0].attn.to_q.in_features)
    qkv = net.adapters["lora_unet_joint_blocks_0_x_block_attn_qkv"]
    down, up = qkv.lora_down.weight.detach(), qkv.lora_up.weight.detach()
    d = tr.transformer_blocks[0].attn.to_k.out_features
    layer = tr.transformer_blocks[0].attn.to_k
    expected = layer(x) + 0.5 * (x @ down.T) @ up[d:2 * d].T  # alpha/r = 2/4; k holds the middle third
    net.apply()
    try:
        assert torch.allclose(layer(x), expected, atol=1e-6)
    finally:
        net.remove()
    # the last block's context adaLN: diffusers holds SAI's rows [shift; scale] as [scale; shift]
    ada = net.adapters["lora_unet_joint_blocks_2_context_block_adaLN_modulation_1"]
    lin = tr.transformer_blocks[2].norm1_context.linear
    w0 = lin.weight.detach().clone()
    delta = 0.5 * ada.lora_up.weight.detach() @ ada.lora_down.weight.detach()
    h = delta.shape[0] // 2
    net.merge()
    try:
        assert torch.allclose(lin.weight, w0 + torch.cat([delta[h:], delta[:h]]), atol=1e-6)
    finally:
        net.unmerge()
    assert torch.allclose(lin.weight, w0, atol=1e-6, rtol=0)  # fp32 unmerge: within an ulp


def _forward(pipe, seed=0):
    tr = pipe.transformer
    g = torch.Generator().manual_seed(seed)
    cfg = tr.config
    sample = torch.randn(1, cfg.in_channels, 8, 8, generator=g)
    ctx = torch.randn(1, 5, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=g)
    with torch.no_grad():
        return tr(hidden_states=sample, encoder_hidden_states=ctx, pooled_projections=pooled,
                  timestep=torch.tensor([500.0]), return_dict=False)[0]


def test_merge_equals_on_the_fly(pipe):
    net = random_net(sd3_parts(pipe), rank=4, alpha=4.0, std=0.05, seed=3)
    base = _forward(pipe)
    net.apply()
    fly = _forward(pipe)
    net.remove()
    net.merge()
    merged = _forward(pipe)
    net.unmerge()
    assert not torch.allclose(base, fly, atol=1e-3)
    assert torch.allclose(fly, merged, atol=1e-5)
    assert torch.allclose(_forward(pipe), base, atol=1e-5)


@pytest.mark.parametrize("src", LAYOUTS)
def test_every_layout_round_trip_is_exact(pipe, tmp_path, src):
    """Write in one layout, read, write in every other, read: merged weights identical to the source's."""
    net = random_net(sd3_parts(pipe), rank=4, alpha=2.0, seed=5)  # scale 1/2: folding it into up is exact
    first = save_lora(tmp_path / f"a-{src}.safetensors", net.kohya_modules(), format=src, family="sd3", dtype=None)
    lf = load_lora(first)
    assert lf.family == "sd3" and lf.format == src
    reference = merged_weights(pipe, first)
    for dst in LAYOUTS:
        out = save_lora(tmp_path / f"b-{src}-{dst}.safetensors", lf, format=dst, dtype=None)
        again = load_lora(out)
        assert again.format == dst and sorted(again.modules) == sorted(lf.modules)
        got = merged_weights(pipe, again)
        for k in reference:
            assert torch.equal(got[k], reference[k]), (src, dst, k)


def test_layout_keys_are_what_each_loader_reads(pipe, tmp_path):
    from safetensors import safe_open

    net = random_net(sd3_parts(pipe), rank=4, alpha=2.0)
    keys = {}
    for fmt in LAYOUTS:
        p = save_lora(tmp_path / f"{fmt}.safetensors", net.kohya_modules(), format=fmt, family="sd3")
        with safe_open(str(p), "pt") as f:
            keys[fmt] = set(f.keys())
            md = f.metadata()
        if fmt == "kohya":
            assert md["modelspec.architecture"].startswith("stable-diffusion-3")
    assert "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight" in keys["kohya"]
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc2.alpha" in keys["kohya"]
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys["diffusers"]
    assert "transformer.transformer_blocks.0.attn.add_v_proj.lora_B.weight" in keys["diffusers"]
    assert "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in keys["diffusers"]
    assert not any(k.endswith(".alpha") for k in keys["diffusers"])
    assert "diffusion_model.joint_blocks.1.x_block.attn.qkv.lora_up.weight" in keys["comfyui"]
    assert "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.alpha" in keys["comfyui"]
    assert "lora_transformer_transformer_blocks_0_attn2_to_v.lora_down.weight" in keys["onetrainer"]


def test_diffusers_layout_folds_alpha_so_loaders_without_it_agree(pipe, tmp_path):
    """ComfyUI applies PEFT keys as B·A (no alpha): the diffusers file must hold s·up."""
    from safetensors.torch import load_file

    net = random_net(sd3_parts(pipe), rank=4, alpha=1.0)  # scale 1/4
    mods = net.kohya_modules()
    p = save_lora(tmp_path / "d.safetensors", mods, format="diffusers", family="sd3", dtype=None)
    state = load_file(str(p))
    t = mods["lora_unet_joint_blocks_1_x_block_mlp_fc1"]
    b = state["transformer.transformer_blocks.1.ff.net.0.proj.lora_B.weight"]
    a = state["transformer.transformer_blocks.1.ff.net.0.proj.lora_A.weight"]
    assert torch.allclose(b @ a, 0.25 * t["lora_up.weight"] @ t["lora_down.weight"], atol=1e-7)


def test_fused_split_both_ways_exact():
    torch.manual_seed(0)
    d, k, r = 6, 5, 2
    rows = [torch.arange(0, d), torch.arange(d, 2 * d), torch.arange(2 * d, 3 * d)]
    one = fused.Factors(torch.randn(r, k), torch.randn(3 * d, r), 1.0)
    pieces = fused.split(one, rows)
    assert all(torch.equal(p.down, one.down) for p in pieces)
    back = fused.fuse(pieces, rows, 3 * d)
    assert back.rank == r and torch.equal(back.up, one.up) and back.alpha == one.alpha
    # three independent LoRAs (other downs, other scales) → rank 3r, block-diagonal up
    three = [fused.Factors(torch.randn(r, k), torch.randn(d, r), a) for a in (1.0, 2.0, 0.5)]
    f = fused.fuse(three, rows, 3 * d)
    assert f.rank == 3 * r
    want = torch.cat([fused.delta(p) for p in three])
    assert torch.allclose(fused.delta(f), want, atol=1e-6)
    assert torch.count_nonzero(f.up[:d, r:]) == 0 and torch.count_nonzero(f.up[d:2 * d, :r]) == 0
    for got, p in zip(fused.split(f, rows), three):
        assert torch.allclose(fused.delta(got), fused.delta(p), atol=1e-6)


def test_split_loras_with_own_downs_fuse_to_rank_3r(pipe, tmp_path):
    """A diffusers file whose to_q/to_k/to_v have their own downs loads as one rank-3r kohya module."""
    from safetensors.torch import load_file, save_file

    net = random_net(sd3_parts(pipe), rank=4, alpha=4.0, preset="attn")
    p = save_lora(tmp_path / "d.safetensors", net.kohya_modules(), format="diffusers", family="sd3", dtype=None)
    state = load_file(str(p))
    with torch.no_grad():
        state["transformer.transformer_blocks.0.attn.to_k.lora_A.weight"] = torch.randn(4, 16)
    from lorakit.formats.st_io import read_safetensors

    _, md = read_safetensors(p)
    save_file(state, str(tmp_path / "e.safetensors"), metadata=md)
    lf = load_lora(tmp_path / "e.safetensors")
    m = lf.modules["lora_unet_joint_blocks_0_x_block_attn_qkv"]
    assert m["lora_down.weight"].shape == (12, 16)
    net2 = load_network(sd3_parts(pipe), lf)
    to_k = pipe.transformer.transformer_blocks[0].attn.to_k
    w0 = to_k.weight.detach().clone()
    net2.merge()
    got = to_k.weight.detach() - w0
    net2.unmerge()
    want = state["transformer.transformer_blocks.0.attn.to_k.lora_B.weight"] @ \
        state["transformer.transformer_blocks.0.attn.to_k.lora_A.weight"]
    assert torch.allclose(got, want, atol=1e-6)


def test_diffusers_load_lora_weights_and_fuse_match_lorakit_merge(pipe, tmp_path):
    net = random_net(sd3_parts(pipe), rank=4, alpha=3.0, seed=7, std=0.1)
    p = save_lora(tmp_path / "d.safetensors", net.kohya_modules(), format="diffusers", family="sd3", dtype=None)
    base = weights(pipe)
    ours = merged_weights(pipe, p)
    pipe.load_lora_weights(str(p), adapter_name="x")
    pipe.fuse_lora(lora_scale=1.0)
    try:
        theirs = {}
        for name, module in (("transformer", pipe.transformer), ("te1", pipe.text_encoder),
                             ("te2", pipe.text_encoder_2)):
            theirs.update({f"{name}.{k}".replace(".base_layer.", "."): v.clone()
                           for k, v in module.state_dict().items() if ".lora_" not in k})
    finally:
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
    changed = 0
    for k, w in ours.items():
        delta = w - base[k]
        if delta.abs().max() == 0:
            continue
        changed += 1
        other = theirs.get(k)
        assert other is not None, k
        assert (other - w).abs().max() <= 1e-5 * max(delta.abs().max().item(), 1e-12) + 1e-7, k
    assert changed >= 40


def test_errors_name_the_file(pipe, tmp_path):
    from safetensors.torch import save_file

    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 16),
               "transformer.transformer_blocks.0.attn.bogus.lora_A.weight": torch.zeros(2, 16)},
              str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraKitError, match="unknown key"):
        load_lora(tmp_path / "bad.safetensors")
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 16)},
              str(tmp_path / "half.safetensors"))
    with pytest.raises(LoraKitError, match="partner"):
        load_lora(tmp_path / "half.safetensors")
    from lorakit.models.tiny import tiny_pipeline
    from conftest import parts_of

    net = random_net(sd3_parts(pipe))
    p = save_lora(tmp_path / "k.safetensors", net.kohya_modules(), family="sd3")
    with pytest.raises(LoraKitError, match="SD3|sd3"):
        load_network(parts_of(tiny_pipeline("sd1"), "sd1"), p)


def test_default_layout_is_the_one_diffusers_and_comfyui_both_load(pipe, tmp_path):
    net = random_net(sd3_parts(pipe))
    p = save_lora(tmp_path / "d.safetensors", net.kohya_modules(), family="sd3")
    assert load_lora(p).format == "diffusers"
    from lorakit.models.tiny import tiny_pipeline
    from conftest import parts_of

    sd1 = LoRANetwork.create(parts_of(tiny_pipeline("sd1"), "sd1"), rank=2)
    assert load_lora(save_lora(tmp_path / "k.safetensors", sd1.kohya_modules(), family="sd1")).format == "kohya"
