"""Flux.2 LoRA names, math and file layouts on a tiny klein pipeline and the real-size architectures
(meta device), its single file's names, and diffusers' own LoRA loading on lorakit's files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_support import names_and_shapes, random_net  # noqa: E402
from flux2_support import flux2_parts, meta_transformer, tiny_flux2_pipeline  # noqa: E402

from lorakit import families  # noqa: E402
from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.families.flux2 import naming as flux2_naming  # noqa: E402
from lorakit.families.flux2.family import FAMILY  # noqa: E402
from lorakit.formats import load_lora, load_network, save_lora  # noqa: E402
from lorakit.lora import ModelParts  # noqa: E402
from lorakit.lora.targets import select  # noqa: E402

DATA = Path(__file__).parent / "data"
LAYOUTS = ("kohya", "diffusers", "comfyui")
REAL = {"klein-4b": (5, 20), "klein-9b": (8, 24), "dev": (8, 48)}


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux2_pipeline()


def weights(pipe):
    return {k: v.clone() for k, v in pipe.transformer.state_dict().items()}


def merged_weights(pipe, lora):
    saved = weights(pipe)
    net = load_network(flux2_parts(pipe), lora)
    net.merge()
    try:
        return weights(pipe)
    finally:
        net.unmerge()
        pipe.transformer.load_state_dict(saved)


@pytest.mark.parametrize("variant", list(REAL))
def test_musubi_names_on_the_real_size_models(variant):
    """lorakit's default network on each real-size Flux.2 = musubi-tuner's `lora_flux_2.py` (recorded from
    its own code): names and (out, in) shapes; 8 per double block, 2 per single block."""
    recorded = json.loads((DATA / "musubi_names_flux2.json").read_text())[variant]["unet_loras"]
    tr = meta_transformer(variant)
    ours = names_and_shapes(select(ModelParts("flux2", tr, [], dict(tr.config)), "transformer"))
    assert {k: list(v) for k, v in ours.items()} == recorded
    double, single = REAL[variant]
    assert len(recorded) == 8 * double + 2 * single
    assert sorted(recorded) == sorted(flux2_naming.default_kohya_names(double, single))
    assert FAMILY.variant_of_config(tr.config) == variant


@pytest.mark.parametrize("variant", list(REAL))
def test_single_file_names_equal_diffusers_converter(variant):
    """BFL's names of the real-size model (meta) → diffusers' by our tables = by diffusers'
    `convert_flux2_transformer_checkpoint_to_diffusers`; every key used; back again; the variant read
    from the file's widths and the file detected as Flux.2 (not Flux.1, whose blocks it shares)."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    model = meta_transformer(variant).state_dict()
    bfl = flux2_naming.diffusers_state_to_bfl(model)
    shapes = {k: tuple(v.shape) for k, v in model.items()}
    assert {k: tuple(v.shape) for k, v in flux2_naming.bfl_state_to_diffusers(bfl).items()} == shapes
    theirs = convert_flux2_transformer_checkpoint_to_diffusers(dict(bfl))
    assert {k: tuple(v.shape) for k, v in theirs.items()} == shapes
    header = {k: tuple(v.shape) for k, v in bfl.items()}
    assert FAMILY.variant_of_shapes(header) == variant
    assert families.detect_checkpoint(header) is FAMILY
    assert families.detect_checkpoint({"model.diffusion_model." + k: s for k, s in header.items()}) is FAMILY


def test_single_file_values_equal_diffusers_converter(pipe):
    """On the tiny model's weights, value for value (q/k/v rows, the swapped final adaLN halves)."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    state = weights(pipe)
    bfl = flux2_naming.diffusers_state_to_bfl(state)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.1.linear1.weight" in bfl
    theirs = convert_flux2_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in bfl.items()})
    ours = flux2_naming.bfl_state_to_diffusers({"model.diffusion_model." + k: v for k, v in bfl.items()})
    assert theirs.keys() == ours.keys() == state.keys()
    assert all(torch.equal(theirs[k], state[k]) and torch.equal(ours[k], state[k]) for k in state)


def test_detection_of_pipelines_and_loras(pipe):
    assert families.detect_pipeline(pipe) is FAMILY
    assert families.by_pipeline("Flux2Pipeline") == (FAMILY,) == families.by_pipeline("Flux2KleinPipeline")
    assert families.detect_lora({}, {"modelspec.architecture": "Flux.2-klein-4b/lora"}) is FAMILY
    assert families.detect_lora({}, {"ss_base_model_version": "flux2"}) is FAMILY
    assert families.detect_lora({}, {"ss_base_model_version": "flux1"}).name == "flux"
    flux1_only = {"lora_unet_double_blocks_0_img_mod_lin": {}, "lora_unet_double_blocks_0_img_attn_qkv": {}}
    assert FAMILY not in families.lora_candidates(flux1_only)
    shared = {"lora_unet_double_blocks_0_img_attn_qkv": {"lora_down.weight": torch.zeros(4, 4096),
                                                         "lora_up.weight": torch.zeros(3 * 4096, 4)}}
    assert families.lora_candidates(shared) == (FAMILY,)  # klein 9B's width: no Flux.1 layer has it


def test_lora_math_by_hand_on_fused_qkv_and_linear1(pipe):
    net = random_net(flux2_parts(pipe), rank=4, alpha=2.0)
    blk, sblk = pipe.transformer.transformer_blocks[1], pipe.transformer.single_transformer_blocks[0]
    x = torch.randn(3, blk.attn.to_k.in_features)
    qkv = net.adapters["lora_unet_double_blocks_1_txt_attn_qkv"]
    down, up = qkv.lora_down.weight.detach(), qkv.lora_up.weight.detach()
    w = blk.attn.add_k_proj.out_features
    want_k = blk.attn.add_k_proj(x) + 0.5 * (x @ down.T) @ up[w:2 * w].T  # alpha/r = 1/2; k: rows w..2w
    l1 = net.adapters["lora_unet_single_blocks_0_linear1"]
    want_l1 = sblk.attn.to_qkv_mlp_proj(x) + 0.5 * (x @ l1.lora_down.weight.detach().T) @ l1.lora_up.weight.detach().T
    net.apply()
    try:
        assert torch.allclose(blk.attn.add_k_proj(x), want_k, atol=1e-6)
        assert torch.allclose(sblk.attn.to_qkv_mlp_proj(x), want_l1, atol=1e-6)
    finally:
        net.remove()
    full = random_net(flux2_parts(pipe), preset="full")
    assert {"lora_unet_img_in", "lora_unet_single_stream_modulation_lin"} <= set(full.adapters)


def _forward(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(1, 16, 4, 4, generator=g)
    cond = {"hidden": torch.randn(1, 5, 24, generator=g)}
    with torch.no_grad():
        return FAMILY.predict(pipe.transformer, noisy, torch.tensor([500.0]), cond, {}, torch.float32)


def test_merge_equals_on_the_fly(pipe):
    net = random_net(flux2_parts(pipe), rank=4, alpha=4.0, std=0.05, seed=3, preset="full")
    base = _forward(pipe)
    net.apply()
    fly = _forward(pipe)
    net.remove()
    net.merge()
    merged = _forward(pipe)
    net.unmerge()
    assert fly.shape == (1, 16, 4, 4) and not torch.allclose(base, fly, atol=1e-3)
    assert torch.allclose(fly, merged, atol=1e-5) and torch.allclose(_forward(pipe), base, atol=1e-5)


@pytest.mark.parametrize("src", LAYOUTS)
def test_every_layout_round_trip_is_exact(pipe, tmp_path, src):
    net = random_net(flux2_parts(pipe), rank=4, alpha=2.0, seed=5, preset="full")
    first = save_lora(tmp_path / f"a-{src}.safetensors", net.kohya_modules(), format=src, family="flux2", dtype=None)
    lf = load_lora(first)
    assert lf.family == "flux2" and lf.format == src
    reference = merged_weights(pipe, first)
    for dst in LAYOUTS:
        again = load_lora(save_lora(tmp_path / f"b-{src}-{dst}.safetensors", lf, format=dst, dtype=None))
        assert again.format == dst and again.family == "flux2" and sorted(again.modules) == sorted(lf.modules)
        got = merged_weights(pipe, again)
        assert all(torch.equal(got[k], reference[k]) for k in reference), (src, dst)


def test_layout_keys(pipe, tmp_path):
    from safetensors import safe_open

    net = random_net(flux2_parts(pipe), rank=4, alpha=2.0)
    keys = {}
    for fmt in LAYOUTS:
        p = save_lora(tmp_path / f"{fmt}.safetensors", net.kohya_modules(), format=fmt, family="flux2")
        with safe_open(str(p), "pt") as f:
            keys[fmt], md = set(f.keys()), f.metadata()
        if fmt == "kohya":
            assert md["ss_base_model_version"] == "flux2" and md["modelspec.architecture"] == "Flux.2/lora"
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys["kohya"]
    assert "transformer.transformer_blocks.0.attn.add_v_proj.lora_A.weight" in keys["diffusers"]
    assert "transformer.single_transformer_blocks.1.attn.to_qkv_mlp_proj.lora_B.weight" in keys["diffusers"]
    assert "diffusion_model.single_blocks.0.linear2.lora_up.weight" in keys["comfyui"]


def test_flux1_only_layers_are_an_error_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "mod.safetensors"
    save_file({"lora_unet_double_blocks_0_img_mod_lin.lora_down.weight": torch.zeros(2, 32),
               "lora_unet_double_blocks_0_img_mod_lin.lora_up.weight": torch.zeros(192, 2)}, str(bad),
              metadata={"ss_base_model_version": "flux2"})
    with pytest.raises(LoraKitError, match="not layers of the Flux.2 transformer") as e:
        load_lora(bad)
    assert "mod.safetensors" in str(e.value)


@pytest.mark.parametrize("layout", ("kohya", "diffusers"))
def test_diffusers_load_lora_weights_and_fuse_match_lorakit_merge(pipe, tmp_path, layout):
    """diffusers' Flux2KleinPipeline.load_lora_weights + fuse_lora on lorakit's diffusers file and on its
    musubi-tuner (kohya) file, which diffusers converts itself = lorakit's merge, ≤ 1e-5 of the delta.
    (diffusers reads `diffusion_model.` keys only with ai-toolkit's lora_A/lora_B: with lora_down it takes
    the file for kohya's and finds no `lora_unet_` name, so the ComfyUI layout is not asked of it.)"""
    net = random_net(flux2_parts(pipe), rank=4, alpha=2.0, std=0.1, seed=7)
    path = save_lora(tmp_path / f"{layout}.safetensors", net.kohya_modules(), format=layout, family="flux2",
                     dtype=torch.float32)
    base, ours = weights(pipe), merged_weights(pipe, path)
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.fuse_lora(components=["transformer"], lora_scale=1.0)
    try:
        theirs = {k.replace(".base_layer.", "."): v.clone() for k, v in pipe.transformer.state_dict().items()
                  if ".lora_" not in k}
    finally:
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
    changed = 0
    for k, w in ours.items():
        delta = (w - base[k]).abs().max().item()
        if delta == 0:
            continue
        changed += 1
        assert (theirs[k] - w).abs().max() <= 1e-5 * delta + 1e-7, k
    assert changed == 2 * 12 + 2 * 2  # every split piece of both double blocks, both single-block layers
