"""Chroma LoRA names, math and file layouts on a tiny Chroma pipeline and the real-size
architecture (meta device), and its single file's names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from chroma_support import chroma_parts, meta_transformer, tiny_chroma_pipeline  # noqa: E402
from dit_support import meta_t5xxl, names_and_shapes, random_net  # noqa: E402

from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.families.chroma import naming as chroma_naming  # noqa: E402
from lorakit.families.chroma.family import FAMILY  # noqa: E402
from lorakit.formats import load_lora, load_network, save_lora  # noqa: E402
from lorakit.lora import ModelParts  # noqa: E402
from lorakit.lora.targets import select  # noqa: E402

DATA = Path(__file__).parent / "data"
LAYOUTS = ("kohya", "diffusers", "comfyui")


@pytest.fixture(scope="module")
def pipe():
    return tiny_chroma_pipeline()


def weights(pipe):
    return {k: v.clone() for k, v in pipe.transformer.state_dict().items()}


def merged_weights(pipe, lora):
    saved = weights(pipe)
    net = load_network(chroma_parts(pipe), lora)
    net.merge()
    try:
        return weights(pipe)
    finally:
        net.unmerge()
        pipe.transformer.load_state_dict(saved)


def test_sd_scripts_names_on_the_real_size_model():
    """lorakit's default network on the real-size Chroma (and T5 when asked) = sd-scripts'
    `lora_flux.py` with `--model_type chroma` (recorded), names and shapes."""
    recorded = json.loads((DATA / "sd_scripts_names_chroma.json").read_text())["chroma"]
    tr = meta_transformer()
    parts = ModelParts("chroma", tr, [meta_t5xxl()], dict(tr.config))
    ours = names_and_shapes(select(parts, "transformer"))
    want = {**recorded["unet_loras"], **recorded["text_encoder_loras"]}
    assert {k: list(v) for k, v in ours.items()} == {k: list(v) for k, v in want.items()}
    assert len(recorded["unet_loras"]) == 228
    assert sorted(want) == sorted(chroma_naming.default_kohya_names(t5_layers=24))
    assert not any("distilled_guidance_layer" in n or "_mod_" in n or "modulation" in n for n in ours)


def test_single_file_names_as_shipped_are_the_diffusers_model():
    """The 643 tensors of the shipped single file (recorded) → ChromaTransformer2DModel's state, every
    key used, shapes equal; and back."""
    recorded = json.loads((DATA / "chroma_single_file_keys.json").read_text())["tensors"]
    state = {k: torch.empty(shape, device="meta") for k, shape in recorded.items()}
    assert len(state) == 643
    model = meta_transformer().state_dict()
    converted = chroma_naming.bfl_state_to_diffusers(state)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in model.items()}
    assert {k: tuple(v.shape) for k, v in chroma_naming.diffusers_state_to_bfl(model).items()} == \
        {k: tuple(s) for k, s in recorded.items()}
    prefixed = chroma_naming.bfl_state_to_diffusers({"model.diffusion_model." + k: v for k, v in state.items()})
    assert prefixed.keys() == converted.keys()


def test_detection_of_checkpoints_and_loras():
    from lorakit import families

    recorded = json.loads((DATA / "chroma_single_file_keys.json").read_text())["tensors"]
    assert families.detect_checkpoint({k: tuple(s) for k, s in recorded.items()}).name == "chroma"
    flux = {k: s for k, s in recorded.items() if not k.startswith("distilled_guidance_layer.")}
    assert families.detect_checkpoint(flux).name == "flux"
    assert families.detect_lora({}, {"ss_base_model_version": "chroma"}).name == "chroma"
    mod = {"lora_unet_double_blocks_0_img_mod_lin": {}, "lora_unet_double_blocks_0_img_attn_qkv": {}}
    assert families.lora_candidates(mod) == (families.get("flux"),)  # a modulation layer: not Chroma


def test_lora_math_by_hand_on_fused_linear1(pipe):
    net = random_net(chroma_parts(pipe), rank=4, alpha=2.0)
    blk = pipe.transformer.single_transformer_blocks[1]
    x = torch.randn(3, blk.proj_mlp.in_features)
    l1 = net.adapters["lora_unet_single_blocks_1_linear1"]
    down, up = l1.lora_down.weight.detach(), l1.lora_up.weight.detach()
    w = blk.attn.to_v.out_features
    want_v = blk.attn.to_v(x) + 0.5 * (x @ down.T) @ up[2 * w:3 * w].T  # alpha/r = 1/2; v: rows 2w..3w
    want_mlp = blk.proj_mlp(x) + 0.5 * (x @ down.T) @ up[3 * w:].T
    net.apply()
    try:
        assert torch.allclose(blk.attn.to_v(x), want_v, atol=1e-6)
        assert torch.allclose(blk.proj_mlp(x), want_mlp, atol=1e-6)
    finally:
        net.remove()
    full = random_net(chroma_parts(pipe), preset="full")
    assert "lora_unet_img_in" in full.adapters and not any("distilled" in n for n in full.adapters)


def _forward(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(1, 4, 8, 8, generator=g)
    cond = {"hidden": torch.randn(1, 5, 32, generator=g), "mask": torch.tensor([[1.0, 1, 1, 0, 0]])}
    with torch.no_grad():
        return FAMILY.predict(pipe.transformer, noisy, torch.tensor([500.0]), cond, {}, torch.float32)


def test_merge_equals_on_the_fly(pipe):
    net = random_net(chroma_parts(pipe), rank=4, alpha=4.0, std=0.05, seed=3, preset="full")
    base = _forward(pipe)
    net.apply()
    fly = _forward(pipe)
    net.remove()
    net.merge()
    merged = _forward(pipe)
    net.unmerge()
    assert fly.shape == (1, 4, 8, 8) and not torch.allclose(base, fly, atol=1e-3)
    assert torch.allclose(fly, merged, atol=1e-5) and torch.allclose(_forward(pipe), base, atol=1e-5)


@pytest.mark.parametrize("src", LAYOUTS)
def test_every_layout_round_trip_is_exact(pipe, tmp_path, src):
    net = random_net(chroma_parts(pipe), rank=4, alpha=2.0, seed=5, preset="full")
    first = save_lora(tmp_path / f"a-{src}.safetensors", net.kohya_modules(), format=src, family="chroma", dtype=None)
    lf = load_lora(first)
    assert lf.family == "chroma" and lf.format == src
    reference = merged_weights(pipe, first)
    for dst in LAYOUTS:
        again = load_lora(save_lora(tmp_path / f"b-{src}-{dst}.safetensors", lf, format=dst, dtype=None))
        assert again.format == dst and again.family == "chroma" and sorted(again.modules) == sorted(lf.modules)
        got = merged_weights(pipe, again)
        assert all(torch.equal(got[k], reference[k]) for k in reference), (src, dst)


def test_layout_keys_and_t5_in_the_diffusers_layout(pipe, tmp_path):
    from safetensors import safe_open

    net = random_net(chroma_parts(pipe, with_t5=True), rank=4, alpha=2.0)
    keys = {}
    for fmt in LAYOUTS:
        p = save_lora(tmp_path / f"{fmt}.safetensors", net.kohya_modules(), format=fmt, family="chroma")
        with safe_open(str(p), "pt") as f:
            keys[fmt], md = set(f.keys()), f.metadata()
        if fmt == "kohya":
            assert md["ss_base_model_version"] == "chroma" and md["modelspec.architecture"] == "chroma/lora"
        assert sorted(load_lora(p).modules) == sorted(net.kohya_modules())
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys["kohya"]
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight" in keys["kohya"]
    assert "transformer.single_transformer_blocks.1.proj_mlp.lora_A.weight" in keys["diffusers"]
    assert "text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight" in keys["diffusers"]  # T5 is text_encoder
    assert not any(k.startswith("text_encoder_2.") for k in keys["diffusers"])
    assert "diffusion_model.single_blocks.0.linear1.lora_down.weight" in keys["comfyui"]


def test_flux_only_layers_are_an_error_naming_the_file(pipe, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "mod.safetensors"
    save_file({"lora_unet_double_blocks_0_img_mod_lin.lora_down.weight": torch.zeros(2, 16),
               "lora_unet_double_blocks_0_img_mod_lin.lora_up.weight": torch.zeros(96, 2)}, str(bad),
              metadata={"ss_base_model_version": "chroma"})
    with pytest.raises(LoraKitError, match="not layers of Chroma") as e:
        load_lora(bad)
    assert "mod.safetensors" in str(e.value)


def test_diffusers_load_lora_weights_and_fuse_match_lorakit_merge(pipe, tmp_path):
    """diffusers' ChromaPipeline.load_lora_weights + fuse_lora on lorakit's diffusers file = lorakit's
    merge (the kohya layout goes through diffusers' Flux converter, which needs width 3072)."""
    net = random_net(chroma_parts(pipe), rank=4, alpha=2.0, std=0.1, seed=7, preset="full")
    path = save_lora(tmp_path / "d.safetensors", net.kohya_modules(), format="diffusers", family="chroma",
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
    assert changed == 2 * 12 + 2 * 5 + 3  # every split piece of both block kinds, img_in, txt_in, proj_out
