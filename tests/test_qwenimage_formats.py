"""Qwen-Image LoRA names, math and file layouts on a tiny Qwen-Image pipeline and the real-size
architecture (meta device), and its single file's names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_support import names_and_shapes, random_net  # noqa: E402
from qwenimage_support import meta_transformer, qwen_parts, tiny_qwenimage_pipeline  # noqa: E402

from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.families.qwenimage import naming as qwen_naming  # noqa: E402
from lorakit.families.qwenimage.family import FAMILY  # noqa: E402
from lorakit.formats import load_lora, load_network, save_lora  # noqa: E402
from lorakit.lora import ModelParts  # noqa: E402
from lorakit.lora.targets import select  # noqa: E402

DATA = Path(__file__).parent / "data"
LAYOUTS = ("kohya", "diffusers", "comfyui", "onetrainer")


@pytest.fixture(scope="module")
def pipe():
    return tiny_qwenimage_pipeline()


def weights(pipe):
    return {k: v.clone() for k, v in pipe.transformer.state_dict().items()}


def merged_weights(pipe, lora):
    saved = weights(pipe)
    net = load_network(qwen_parts(pipe), lora)
    net.merge()
    try:
        return weights(pipe)
    finally:
        net.unmerge()
        pipe.transformer.load_state_dict(saved)


def test_musubi_names_on_the_real_size_model():
    """lorakit's default network on the real-size Qwen-Image = musubi-tuner's `lora_qwen_image.py`
    (recorded by running its code): 840 names, modulation layers included, shapes equal."""
    recorded = json.loads((DATA / "musubi_names_qwenimage.json").read_text())["qwenimage"]["unet_loras"]
    tr = meta_transformer()
    ours = names_and_shapes(select(ModelParts("qwenimage", tr, [], dict(tr.config)), "transformer"))
    assert {k: list(v) for k, v in ours.items()} == recorded
    assert len(recorded) == 840 and sorted(recorded) == qwen_naming.default_kohya_names(60)
    assert recorded["lora_unet_transformer_blocks_59_img_mod_1"] == [18432, 3072]
    assert recorded["lora_unet_transformer_blocks_0_img_mlp_net_0_proj"] == [12288, 3072]


def test_single_file_names_are_the_diffusers_model():
    """The file as shipped holds diffusers' names (diffusers' single-file loader maps it by identity),
    with `model.diffusion_model.` in some repacks: both are detected and read as the model's names."""
    from lorakit import families

    state = meta_transformer().state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert len(shapes) == 1933
    assert families.detect_checkpoint(shapes).name == "qwenimage"
    prefixed = {"model.diffusion_model." + k: s for k, s in shapes.items()}
    assert families.detect_checkpoint(prefixed).name == "qwenimage"
    assert qwen_naming.strip_prefix(prefixed) == shapes
    assert FAMILY.to_original(state).keys() == state.keys()
    assert families.detect_checkpoint({"double_blocks.0.img_attn.qkv.weight": (9216, 3072)}).name == "flux"


def test_lora_detection_by_names_and_metadata():
    from lorakit import families

    assert families.detect_lora({}, {"ss_base_model_version": "qwen_image"}).name == "qwenimage"
    mods = {"lora_unet_transformer_blocks_0_img_mod_1": {}, "lora_unet_transformer_blocks_3_attn_add_q_proj": {}}
    assert families.lora_candidates(mods) == (FAMILY,)
    assert not FAMILY.has_lora_module("lora_unet_double_blocks_0_img_attn_qkv")
    assert not FAMILY.has_lora_module("lora_unet_transformer_blocks_0_attn_norm_q")  # an RMSNorm, no Linear
    assert qwen_naming.sai_path_of_kohya("lora_unet_time_text_embed_timestep_embedder_linear_1") == \
        "time_text_embed.timestep_embedder.linear_1"


def test_lora_math_by_hand(pipe):
    net = random_net(qwen_parts(pipe), rank=4, alpha=2.0, preset="full")
    blk = pipe.transformer.transformer_blocks[1]
    for name, layer in (("lora_unet_transformer_blocks_1_attn_add_v_proj", blk.attn.add_v_proj),
                        ("lora_unet_transformer_blocks_1_img_mod_1", blk.img_mod[1]),
                        ("lora_unet_txt_in", pipe.transformer.txt_in)):
        x = torch.randn(3, layer.in_features)
        m = net.adapters[name]
        down, up = m.lora_down.weight.detach(), m.lora_up.weight.detach()
        want = layer(x) + 0.5 * (x @ down.T) @ up.T  # alpha / rank = 1/2
        net.apply()
        try:
            assert torch.allclose(layer(x), want, atol=1e-6), name
        finally:
            net.remove()
    default = random_net(qwen_parts(pipe))
    assert sorted(default.adapters) == qwen_naming.default_kohya_names(2)
    attn = random_net(qwen_parts(pipe), preset="attn")
    assert len(attn.adapters) == 2 * 8 and all("_attn_" in n for n in attn.adapters)


def _forward(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(1, 16, 8, 8, generator=g)
    cond = {"hidden": torch.randn(1, 5, 32, generator=g), "mask": torch.tensor([[1.0, 1, 1, 0, 0]])}
    with torch.no_grad():
        return FAMILY.predict(pipe.transformer, noisy, torch.tensor([500.0]), cond, {}, torch.float32)


def test_merge_equals_on_the_fly(pipe):
    net = random_net(qwen_parts(pipe), rank=4, alpha=4.0, std=0.05, seed=3, preset="full")
    base = _forward(pipe)
    net.apply()
    fly = _forward(pipe)
    net.remove()
    net.merge()
    merged = _forward(pipe)
    net.unmerge()
    assert fly.shape == (1, 16, 8, 8) and not torch.allclose(base, fly, atol=1e-3)
    assert torch.allclose(fly, merged, atol=1e-5) and torch.allclose(_forward(pipe), base, atol=1e-5)


@pytest.mark.parametrize("src", LAYOUTS)
def test_every_layout_round_trip_is_exact(pipe, tmp_path, src):
    net = random_net(qwen_parts(pipe), rank=4, alpha=2.0, seed=5, preset="full")
    first = save_lora(tmp_path / f"a-{src}.safetensors", net.kohya_modules(), format=src, family="qwenimage",
                      dtype=None)
    lf = load_lora(first)
    assert lf.family == "qwenimage" and lf.format == src
    reference = merged_weights(pipe, first)
    for dst in LAYOUTS:
        again = load_lora(save_lora(tmp_path / f"b-{src}-{dst}.safetensors", lf, format=dst, dtype=None))
        assert again.format == dst and again.family == "qwenimage" and sorted(again.modules) == sorted(lf.modules)
        got = merged_weights(pipe, again)
        assert all(torch.equal(got[k], reference[k]) for k in reference), (src, dst)


def test_layout_keys(pipe, tmp_path):
    from safetensors import safe_open

    net = random_net(qwen_parts(pipe), rank=4, alpha=2.0)
    keys = {}
    for fmt in LAYOUTS:
        p = save_lora(tmp_path / f"{fmt}.safetensors", net.kohya_modules(), format=fmt, family="qwenimage")
        with safe_open(str(p), "pt") as f:
            keys[fmt], md = set(f.keys()), f.metadata()
        if fmt == "kohya":
            assert md["ss_base_model_version"] == "qwen_image" and md["modelspec.architecture"] == "qwen-image/lora"
        assert sorted(load_lora(p).modules) == sorted(net.kohya_modules())
    assert "lora_unet_transformer_blocks_0_img_mlp_net_0_proj.lora_down.weight" in keys["kohya"]
    assert "transformer.transformer_blocks.1.attn.to_add_out.lora_A.weight" in keys["diffusers"]
    assert "diffusion_model.transformer_blocks.0.txt_mod.1.lora_up.weight" in keys["comfyui"]
    assert "lora_transformer_transformer_blocks_0_attn_to_out_0.alpha" in keys["onetrainer"]
    assert len(keys["kohya"]) == 3 * 28 and len(keys["diffusers"]) == 2 * 28


def test_unknown_layers_are_an_error_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "typo.safetensors"
    save_file({"lora_unet_transformer_blocks_0_attn_to_qq.lora_down.weight": torch.zeros(2, 16),
               "lora_unet_transformer_blocks_0_attn_to_qq.lora_up.weight": torch.zeros(16, 2)}, str(bad),
              metadata={"ss_base_model_version": "qwen_image"})
    with pytest.raises(LoraKitError, match="not layers of the Qwen-Image transformer") as e:
        load_lora(bad)
    assert "typo.safetensors" in str(e.value)


@pytest.mark.parametrize("fmt", ["diffusers", "kohya", "comfyui"])
def test_diffusers_load_lora_weights_and_fuse_match_lorakit_merge(pipe, tmp_path, fmt):
    """diffusers' QwenImagePipeline.load_lora_weights + fuse_lora on lorakit's file = lorakit's merge:
    its PEFT layout, and musubi-tuner's and ComfyUI's, which diffusers converts
    (`_convert_non_diffusers_qwen_lora_to_diffusers`), embedding layers included."""
    net = random_net(qwen_parts(pipe), rank=4, alpha=2.0, std=0.1, seed=7, preset="full")
    path = save_lora(tmp_path / f"{fmt}.safetensors", net.kohya_modules(), format=fmt, family="qwenimage",
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
        assert (theirs[k] - w).abs().max() <= 1e-5 * delta + 1e-7, (fmt, k)
    assert changed == 2 * 14 + 6  # every block Linear and the six outside the blocks
