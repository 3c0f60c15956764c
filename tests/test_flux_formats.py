"""Flux.1 LoRA names, math and file layouts on a tiny Flux pipeline and the real-size Flux.1-dev
architecture (meta device)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flux_support import flux_parts, meta_transformer, tiny_flux_pipeline  # noqa: E402
from dit_support import meta_clip_l, meta_t5xxl, names_and_shapes, random_net, sd_scripts_names  # noqa: E402

from lorakit.families.flux import naming as flux_naming  # noqa: E402
from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.families.flux.family import FAMILY  # noqa: E402
from lorakit.formats import load_lora, load_network, save_lora  # noqa: E402
from lorakit.lora import LoRANetwork, ModelParts  # noqa: E402
from lorakit.lora.targets import select  # noqa: E402

LAYOUTS = ("kohya", "diffusers", "comfyui", "onetrainer")


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def weights(pipe):
    out = {f"transformer.{k}": v.clone() for k, v in pipe.transformer.state_dict().items()}
    out.update({f"te1.{k}": v.clone() for k, v in pipe.text_encoder.state_dict().items()})
    return out


def merged_weights(pipe, lora):
    """Weights with the LoRA merged; the pipeline gets its exact weights back afterwards."""
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in (pipe.transformer, pipe.text_encoder)]
    net = load_network(flux_parts(pipe), lora)
    net.merge()
    try:
        return weights(pipe)
    finally:
        net.unmerge()
        for m, s in zip((pipe.transformer, pipe.text_encoder), saved):
            m.load_state_dict(s)


def test_kohya_names_of_real_size_flux1_dev():
    """A network on the real Flux.1-dev transformer, CLIP-L and T5-XXL (meta device) names its
    modules as sd-scripts' networks/lora_flux.py does: the names it gave the same models, recorded
    in tests/data (19×10 + 38×3 = 304, CLIP-L 12×6 = 72, T5 24×7 = 168)."""
    tr = meta_transformer()
    parts = ModelParts("flux", tr, [meta_clip_l(), meta_t5xxl()], dict(tr.config))
    ours = names_and_shapes(select(parts, "transformer"))
    assert ours == sd_scripts_names("flux1-dev")  # each name on the layer of the same shape as theirs
    names = list(ours)
    assert sum(n.startswith("lora_unet_") for n in names) == 304
    assert sum(n.startswith("lora_te1_") for n in names) == 72
    assert sum(n.startswith("lora_te3_") for n in names) == 168
    # the table other tests use agrees with sd-scripts too
    assert sorted(flux_naming.default_kohya_names(19, 38, 12, 24)) == sorted(names)
    assert "lora_unet_double_blocks_18_img_attn_qkv" in names and "lora_unet_single_blocks_37_linear1" in names
    linear1 = parts.index()["lora_unet_single_blocks_0_linear1"]
    assert tuple(linear1.module.weight.shape) == (3 * 3072 + 12288, 3072)  # q | k | v | mlp, as BFL stores it
    counts = {p: sum(t.part == "unet" for t in select(parts, p)) for p in ("attn", "attn-mlp", "full")}
    assert counts == {"attn": 19 * 4 + 38 * 2, "attn-mlp": 19 * 8 + 38 * 2, "full": 304 + 10}


def test_trained_file_names_equal_the_real_architecture_names(pipe, tmp_path):
    """The tiny model's names are the real model's names (as sd-scripts gives them), block for block."""
    net = random_net(flux_parts(pipe))
    p = save_lora(tmp_path / "k.safetensors", net.kohya_modules(), family="flux")
    real = set(sd_scripts_names("flux1-dev"))
    tiny = set(flux_naming.default_kohya_names(2, 2, 2))
    assert set(load_lora(p).modules) == tiny and tiny <= real


def test_row_map_agrees_with_diffusers_single_file_converter():
    """Each BFL row goes where diffusers' own converter puts it. Rows are numbered on [rows, 1]
    tensors of Flux's real heights (its converter fixes the width at 3072)."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    w = 3072
    shapes = {"double_blocks.0.img_attn.qkv": 3 * w, "double_blocks.0.txt_attn.qkv": 3 * w,
              "double_blocks.0.img_attn.proj": w, "double_blocks.0.txt_attn.proj": w,
              "double_blocks.0.img_mlp.0": 4 * w, "double_blocks.0.img_mlp.2": w, "double_blocks.0.txt_mlp.0": 4 * w,
              "double_blocks.0.txt_mlp.2": w, "double_blocks.0.img_mod.lin": 6 * w,
              "double_blocks.0.txt_mod.lin": 6 * w, "single_blocks.0.linear1": 7 * w, "single_blocks.0.linear2": w,
              "single_blocks.0.modulation.lin": 3 * w, "img_in": w, "txt_in": w, "time_in.in_layer": w,
              "time_in.out_layer": w, "vector_in.in_layer": w, "vector_in.out_layer": w,
              "guidance_in.in_layer": w, "guidance_in.out_layer": w, "final_layer.linear": 64,
              "final_layer.adaLN_modulation.1": 2 * w}
    state = {}
    for path, rows in shapes.items():
        state[f"{path}.weight"] = torch.arange(rows, dtype=torch.float32)[:, None]
        state[f"{path}.bias"] = torch.arange(rows, dtype=torch.float32)
    for norm in ("double_blocks.0.img_attn.norm", "double_blocks.0.txt_attn.norm", "single_blocks.0.norm"):
        state[f"{norm}.query_norm.scale"] = torch.zeros(128)
        state[f"{norm}.key_norm.scale"] = torch.zeros(128)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(state))
    covered = set()
    for path, rows in shapes.items():
        for diff, idx in flux_naming.diffusers_rows(path, rows, w):
            assert torch.equal(theirs[f"{diff}.weight"][:, 0], idx.float()), (path, diff)
            assert torch.equal(theirs[f"{diff}.bias"], idx.float()), (path, diff)
            covered.add(f"{diff}.weight")
    qk_norms = {k for k in theirs if ".norm_q." in k or ".norm_k." in k or ".norm_added_" in k}
    assert covered == {k for k in theirs if k.endswith(".weight")} - qk_norms and len(covered) == 30


def test_whole_checkpoint_round_trip_bfl_diffusers(pipe):
    """diffusers → BFL → diffusers is the identity, on a model of any width (tiny here)."""
    state = pipe.transformer.state_dict()
    bfl = flux_naming.diffusers_state_to_bfl(state)
    assert bfl["single_blocks.0.linear1.weight"].shape == (3 * 16 + 64, 16)
    assert "double_blocks.1.txt_attn.norm.key_norm.scale" in bfl
    back = flux_naming.bfl_state_to_diffusers({"model.diffusion_model." + k: v for k, v in bfl.items()})
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k]), k
    d = pipe.transformer.norm_out.linear.weight
    h = d.shape[0] // 2
    assert torch.equal(bfl["final_layer.adaLN_modulation.1.weight"][:h], d[h:])  # BFL: shift first


def test_presets_attention_mlp_all_linear(pipe):
    parts = flux_parts(pipe)
    attn = {t.name for t in select(parts, "attn", text_encoder=False)}
    attn_mlp = {t.name for t in select(parts, "attn-mlp", text_encoder=False)}
    every = {t.name for t in select(parts, "transformer", text_encoder=False)}
    full = {t.name for t in select(parts, "full", text_encoder=False)}
    assert attn < attn_mlp < every < full
    assert attn_mlp - attn == {n for n in every if "_mlp_" in n}
    assert every - attn_mlp == {n for n in every if n.endswith(("_mod_lin", "modulation_lin"))}
    assert {n for n in attn if "single" in n} == {f"lora_unet_single_blocks_{i}_{s}" for i in (0, 1)
                                                  for s in ("linear1", "linear2")}


def test_lora_math_by_hand_on_fused_linear1_and_qkv(pipe):
    parts = flux_parts(pipe)
    net = random_net(parts, rank=4, alpha=2.0)
    tr = pipe.transformer
    blk = tr.single_transformer_blocks[1]
    x = torch.randn(3, blk.proj_mlp.in_features)
    l1 = net.adapters["lora_unet_single_blocks_1_linear1"]
    down, up = l1.lora_down.weight.detach(), l1.lora_up.weight.detach()
    w = blk.attn.to_k.out_features
    want_k = blk.attn.to_k(x) + 0.5 * (x @ down.T) @ up[w:2 * w].T  # alpha/r = 1/2; k: rows w..2w
    want_mlp = blk.proj_mlp(x) + 0.5 * (x @ down.T) @ up[3 * w:].T  # the MLP: rows after q, k, v
    qkv = net.adapters["lora_unet_double_blocks_0_txt_attn_qkv"]
    y = torch.randn(3, tr.transformer_blocks[0].attn.add_v_proj.in_features)
    want_v = tr.transformer_blocks[0].attn.add_v_proj(y) + \
        0.5 * (y @ qkv.lora_down.weight.detach().T) @ qkv.lora_up.weight.detach()[2 * w:].T
    net.apply()
    try:
        assert torch.allclose(blk.attn.to_k(x), want_k, atol=1e-6)
        assert torch.allclose(blk.proj_mlp(x), want_mlp, atol=1e-6)
        assert torch.allclose(tr.transformer_blocks[0].attn.add_v_proj(y), want_v, atol=1e-6)
    finally:
        net.remove()
    ada = net.adapters["lora_unet_final_layer_adaLN_modulation_1"] if "lora_unet_final_layer_adaLN_modulation_1" \
        in net.adapters else None
    assert ada is None  # the default preset stays inside the blocks, as sd-scripts does


def _forward(pipe, seed=0):
    tr = pipe.transformer
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(1, 4, 8, 8, generator=g)
    cond = {"hidden": torch.randn(1, 5, 32, generator=g), "pooled": torch.randn(1, 8, generator=g)}
    with torch.no_grad():
        return FAMILY.predict(tr, noisy, torch.tensor([500.0]), cond, {}, torch.float32)


def test_merge_equals_on_the_fly(pipe):
    net = random_net(flux_parts(pipe), rank=4, alpha=4.0, std=0.05, seed=3, preset="full")
    base = _forward(pipe)
    net.apply()
    fly = _forward(pipe)
    net.remove()
    net.merge()
    merged = _forward(pipe)
    net.unmerge()
    assert fly.shape == (1, 4, 8, 8)
    assert not torch.allclose(base, fly, atol=1e-3)
    assert torch.allclose(fly, merged, atol=1e-5)
    assert torch.allclose(_forward(pipe), base, atol=1e-5)


@pytest.mark.parametrize("src", LAYOUTS)
def test_every_layout_round_trip_is_exact(pipe, tmp_path, src):
    """Write in one layout, read, write in every other, read: merged weights identical to the source's."""
    net = random_net(flux_parts(pipe), rank=4, alpha=2.0, seed=5, preset="full")
    first = save_lora(tmp_path / f"a-{src}.safetensors", net.kohya_modules(), format=src, family="flux", dtype=None)
    lf = load_lora(first)
    assert lf.family == "flux" and lf.format == src
    reference = merged_weights(pipe, first)
    for dst in LAYOUTS:
        out = save_lora(tmp_path / f"b-{src}-{dst}.safetensors", lf, format=dst, dtype=None)
        again = load_lora(out)
        assert again.format == dst and again.family == "flux" and sorted(again.modules) == sorted(lf.modules)
        got = merged_weights(pipe, again)
        for k in reference:
            assert torch.equal(got[k], reference[k]), (src, dst, k)


def test_layout_keys_are_what_each_loader_reads(pipe, tmp_path):
    from safetensors import safe_open

    net = random_net(flux_parts(pipe, with_t5=True), rank=4, alpha=2.0)
    keys = {}
    for fmt in LAYOUTS:
        p = save_lora(tmp_path / f"{fmt}.safetensors", net.kohya_modules(), format=fmt, family="flux")
        with safe_open(str(p), "pt") as f:
            keys[fmt] = set(f.keys())
            md = f.metadata()
        if fmt == "kohya":
            assert md["ss_base_model_version"] == "flux1" and md["modelspec.architecture"].startswith("flux-1")
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys["kohya"]
    assert "lora_unet_single_blocks_1_linear1.alpha" in keys["kohya"]
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight" in keys["kohya"]
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight" in keys["diffusers"]
    assert "transformer.transformer_blocks.1.attn.add_k_proj.lora_B.weight" in keys["diffusers"]
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in keys["diffusers"]
    assert "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight" in keys["diffusers"]
    assert not any(k.endswith(".alpha") for k in keys["diffusers"])
    assert "diffusion_model.single_blocks.0.linear1.lora_up.weight" in keys["comfyui"]
    assert "text_encoders.t5xxl.transformer.encoder.block.1.layer.1.DenseReluDense.wo.alpha" in keys["comfyui"]
    assert "lora_transformer_single_transformer_blocks_0_proj_mlp.lora_down.weight" in keys["onetrainer"]
    assert "lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight" in keys["onetrainer"]  # T5 is OneTrainer's te2


def test_fused_to_split_shares_down_and_split_to_fused_is_block_diagonal(pipe, tmp_path):
    """kohya → diffusers: q/k/v (and linear1's MLP) share one `down`. Split LoRAs with their own
    downs → one kohya module of rank 3r (4r for linear1) whose merged weights are the same."""
    from safetensors.torch import load_file, save_file

    from lorakit.formats.st_io import read_safetensors

    net = random_net(flux_parts(pipe), rank=4, alpha=4.0, seed=9)
    p = save_lora(tmp_path / "d.safetensors", net.kohya_modules(), format="diffusers", family="flux", dtype=None)
    state = load_file(str(p))
    a = "transformer.single_transformer_blocks.0.{}.lora_A.weight"
    assert all(torch.equal(state[a.format("attn.to_q")], state[a.format(x)])
               for x in ("attn.to_k", "attn.to_v", "proj_mlp"))
    torch.manual_seed(4)
    for piece in ("attn.to_k", "proj_mlp"):
        state[a.format(piece)] = torch.randn_like(state[a.format(piece)])
    dq = "transformer.transformer_blocks.1.attn.{}.lora_A.weight"
    state[dq.format("add_q_proj")] = torch.randn_like(state[dq.format("add_q_proj")])
    _, md = read_safetensors(p)
    save_file(state, str(tmp_path / "e.safetensors"), metadata=md)
    lf = load_lora(tmp_path / "e.safetensors")
    assert lf.modules["lora_unet_single_blocks_0_linear1"]["lora_down.weight"].shape == (16, 16)  # 4r
    assert lf.modules["lora_unet_double_blocks_1_txt_attn_qkv"]["lora_down.weight"].shape == (12, 16)  # 3r
    assert lf.modules["lora_unet_double_blocks_0_img_attn_qkv"]["lora_down.weight"].shape == (4, 16)  # shared: r
    base = weights(pipe)
    got = merged_weights(pipe, lf)
    for piece, key in (("attn.to_k", "single_transformer_blocks.0.attn.to_k"),
                       ("proj_mlp", "single_transformer_blocks.0.proj_mlp"),
                       ("add_q_proj", "transformer_blocks.1.attn.add_q_proj")):
        head = "transformer." + key
        want = state[f"{head}.lora_B.weight"] @ state[f"{head}.lora_A.weight"]
        assert torch.allclose(got[f"{head}.weight"] - base[f"{head}.weight"], want, atol=1e-6), key
    # and back to split: the diffusers file of the fused module reproduces the same merged weights
    out = save_lora(tmp_path / "f.safetensors", lf, format="diffusers", dtype=None)
    again = merged_weights(pipe, out)
    for k in got:
        assert torch.allclose(again[k], got[k], atol=1e-6), k


def test_split_file_adapting_q_k_v_only_of_single_blocks(pipe, tmp_path):
    """diffusers' trainer adapts single blocks' to_q/to_k/to_v but not proj_mlp: the fused linear1
    gets zero MLP rows and merges to the same weights."""
    from safetensors.torch import load_file, save_file

    net = random_net(flux_parts(pipe), rank=4, alpha=4.0, seed=2, preset="attn")
    p = save_lora(tmp_path / "d.safetensors", net.kohya_modules(), format="diffusers", family="flux", dtype=None)
    state = {k: v for k, v in load_file(str(p)).items() if ".proj_mlp." not in k}
    save_file(state, str(tmp_path / "qkv.safetensors"))
    base = weights(pipe)
    got = merged_weights(pipe, tmp_path / "qkv.safetensors")
    assert torch.equal(got["transformer.single_transformer_blocks.0.proj_mlp.weight"],
                       base["transformer.single_transformer_blocks.0.proj_mlp.weight"])
    head = "transformer.single_transformer_blocks.0.attn.to_v"
    want = state[f"{head}.lora_B.weight"] @ state[f"{head}.lora_A.weight"]
    assert torch.allclose(got[f"{head}.weight"] - base[f"{head}.weight"], want, atol=1e-6)


def test_errors_name_the_file(pipe, tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_unet_double_blocks_0_img_attn_qkvx.lora_down.weight": torch.zeros(2, 16),
               "lora_unet_double_blocks_0_img_attn_qkvx.lora_up.weight": torch.zeros(48, 2),
               "lora_unet_single_blocks_0_linear1.lora_down.weight": torch.zeros(2, 16),
               "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.zeros(112, 2)},
              str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraKitError, match="bad.safetensors.*not layers of the Flux transformer|not layers"):
        load_lora(tmp_path / "bad.safetensors")
    from sd3_support import sd3_parts, tiny_sd3_pipeline

    net = random_net(flux_parts(pipe))
    p = save_lora(tmp_path / "k.safetensors", net.kohya_modules(), family="flux")
    with pytest.raises(LoraKitError, match="Flux"):
        load_network(sd3_parts(tiny_sd3_pipeline()), p)
