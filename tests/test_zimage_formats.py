"""Z-Image LoRA names, math and file layouts on a tiny Z-Image pipeline and the real-size architecture
(meta device), and its single file's names."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_support import names_and_shapes, random_net  # noqa: E402
from zimage_support import meta_transformer, tiny_zimage_pipeline, zimage_parts  # noqa: E402

from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.families.zimage import naming as zi  # noqa: E402
from lorakit.families.zimage.family import FAMILY  # noqa: E402
from lorakit.formats import load_lora, load_network, save_lora  # noqa: E402
from lorakit.lora import ModelParts  # noqa: E402
from lorakit.lora.targets import select  # noqa: E402

DATA = Path(__file__).parent / "data"
LAYOUTS = ("kohya", "diffusers", "comfyui")


@pytest.fixture(scope="module")
def pipe():
    return tiny_zimage_pipeline()


def weights(pipe):
    return {k: v.clone() for k, v in pipe.transformer.state_dict().items()}


def merged_weights(pipe, lora):
    saved = weights(pipe)
    net = load_network(zimage_parts(pipe), lora)
    net.merge()
    try:
        return weights(pipe)
    finally:
        net.unmerge()
        pipe.transformer.load_state_dict(saved)


def test_musubi_names_on_the_real_size_model():
    """lorakit's default network on the real-size Z-Image = musubi-tuner's `networks/lora_zimage.py`
    (recorded from its code), names and shapes; `full` adds the refiners, adaLN and embedders."""
    recorded = json.loads((DATA / "musubi_names_zimage.json").read_text())
    tr = meta_transformer()
    parts = ModelParts("zimage", tr, [], dict(tr.config))
    ours = names_and_shapes(select(parts, "transformer"))
    want = recorded["zimage"]["unet_loras"]
    assert len(want) == 210 and recorded["source"]["commit"] == "30c658c4f4b0bf05038b3346eff9670259b10fc7"
    assert {k: list(v) for k, v in ours.items()} == want
    assert sorted(want) == sorted(zi.default_kohya_names())
    assert len(select(parts, "attn")) == 120
    full = names_and_shapes(select(parts, "full"))
    assert len(full) == 30 * 8 + 2 * 8 + 2 * 7 + 6  # + x/cap embedders, t embedder ×2, final linear and adaLN
    assert full["lora_unet_all_x_embedder_2-1"] == (3840, 64) and full["lora_unet_cap_embedder_1"] == (3840, 2560)


def test_single_file_names_are_diffusers_own_conversion():
    """The original layout (q, k, v stacked; `x_embedder`, `final_layer`, `attention.out`, `q_norm`) of
    the real-size model goes back to ZImageTransformer2DModel's state through diffusers' converter;
    diffusers and lorakit both tell it is Z-Image."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from lorakit import families

    model = meta_transformer().state_dict()
    original = zi.diffusers_state_to_original(model)
    assert original["layers.0.attention.qkv.weight"].shape == (3 * 3840, 3840)
    assert {"x_embedder.weight", "final_layer.linear.weight", "layers.29.attention.out.weight",
            "noise_refiner.1.attention.q_norm.weight"} <= original.keys()
    assert not any("all_" in k or "to_q" in k for k in original)
    back = zi.original_state_to_diffusers(original)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in model.items()}
    prefixed = {zi.BFL + k: v for k, v in original.items()}
    assert infer_diffusers_model_type(prefixed) == "z-image-turbo"
    shapes = {k: tuple(v.shape) for k, v in prefixed.items()}
    assert families.detect_checkpoint(shapes).name == "zimage"
    assert families.detect_checkpoint({k: tuple(v.shape) for k, v in original.items()}).name == "zimage"
    assert zi.original_state_to_diffusers(dict(model)).keys() == model.keys()  # already diffusers: unchanged


def test_lora_math_by_hand(pipe):
    net = random_net(zimage_parts(pipe), rank=4, alpha=2.0)
    layer = pipe.transformer.layers[1].attention.to_v
    x = torch.randn(3, layer.in_features)
    m = net.adapters["lora_unet_layers_1_attention_to_v"]
    down, up = m.lora_down.weight.detach(), m.lora_up.weight.detach()
    want = layer(x) + 0.5 * (x @ down.T) @ up.T  # alpha / rank = 1/2
    net.apply()
    try:
        assert torch.allclose(layer(x), want, atol=1e-6)
    finally:
        net.remove()
    assert sorted(net.adapters) == sorted(zi.default_kohya_names(2))


def _forward(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(2, 4, 8, 8, generator=g)
    cond = {"hidden": torch.randn(2, 6, 24, generator=g), "mask": torch.tensor([[1.0] * 6, [1.0] * 4 + [0.0] * 2])}
    with torch.no_grad():
        return FAMILY.predict(pipe.transformer, noisy, torch.tensor([500.0, 250.0]), cond, {}, torch.float32)


def test_merge_equals_on_the_fly(pipe):
    net = random_net(zimage_parts(pipe), rank=4, alpha=4.0, std=0.05, seed=3, preset="full")
    base = _forward(pipe)
    net.apply()
    fly = _forward(pipe)
    net.remove()
    net.merge()
    merged = _forward(pipe)
    net.unmerge()
    assert fly.shape == (2, 4, 8, 8) and not torch.allclose(base, fly, atol=1e-3)
    assert torch.allclose(fly, merged, atol=1e-5) and torch.allclose(_forward(pipe), base, atol=1e-5)


@pytest.mark.parametrize("src", LAYOUTS)
def test_every_layout_round_trip_is_exact(pipe, tmp_path, src):
    net = random_net(zimage_parts(pipe), rank=4, alpha=2.0, seed=5, preset="full")
    first = save_lora(tmp_path / f"a-{src}.safetensors", net.kohya_modules(), format=src, family="zimage", dtype=None)
    lf = load_lora(first)
    assert lf.family == "zimage" and lf.format == src
    reference = merged_weights(pipe, first)
    for dst in LAYOUTS:
        again = load_lora(save_lora(tmp_path / f"b-{src}-{dst}.safetensors", lf, format=dst, dtype=None))
        assert again.format == dst and again.family == "zimage" and sorted(again.modules) == sorted(lf.modules)
        got = merged_weights(pipe, again)
        assert all(torch.equal(got[k], reference[k]) for k in reference), (src, dst)


def test_layout_keys_and_metadata(pipe, tmp_path):
    from safetensors import safe_open

    net = random_net(zimage_parts(pipe), rank=4, alpha=2.0)
    keys = {}
    for fmt in LAYOUTS:
        p = save_lora(tmp_path / f"{fmt}.safetensors", net.kohya_modules(), format=fmt, family="zimage")
        with safe_open(str(p), "pt") as f:
            keys[fmt], md = set(f.keys()), f.metadata()
        if fmt == "kohya":
            assert md["ss_base_model_version"] == "z_image" and md["modelspec.architecture"] == "Z-Image/lora"
        assert sorted(load_lora(p).modules) == sorted(net.kohya_modules())
    assert "lora_unet_layers_0_attention_to_q.lora_down.weight" in keys["kohya"]
    assert "transformer.layers.1.feed_forward.w2.lora_A.weight" in keys["diffusers"]
    assert "diffusion_model.layers.0.attention.to_out.0.alpha" in keys["comfyui"]
    # a file without metadata is still told Z-Image by its names
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(tmp_path / "kohya.safetensors")), str(tmp_path / "bare.safetensors"))
    assert load_lora(tmp_path / "bare.safetensors").family == "zimage"


def _musubi_comfy(modules):
    """What musubi-tuner's `convert_z_image_lora_to_comfy.py` writes: q, k, v concatenated (`down` stacked,
    `up` block-diagonal, alpha × 3), `to_out_0` renamed `out`, the `lora_unet_` names kept."""
    out = {}
    for name, t in modules.items():
        if "_attention_to_k" in name or "_attention_to_v" in name:
            continue
        if "_attention_to_q" in name:
            pieces = [modules[name.replace("to_q", q)] for q in ("to_q", "to_k", "to_v")]
            r = pieces[0]["lora_down.weight"].shape[0]
            d = pieces[0]["lora_up.weight"].shape[0]
            up = torch.zeros(3 * d, 3 * r)
            for i, p in enumerate(pieces):
                up[i * d:(i + 1) * d, i * r:(i + 1) * r] = p["lora_up.weight"]
            qkv = name.replace("to_q", "qkv")
            out[qkv] = {"lora_down.weight": torch.cat([p["lora_down.weight"] for p in pieces]), "lora_up.weight": up,
                        "alpha": pieces[0]["alpha"] * 3}
            continue
        out[name.replace("attention_to_out_0", "attention_out")] = dict(t)
    return {f"{n}.{sub}": v for n, t in out.items() for sub, v in t.items()}


def test_fused_files_read_exactly(pipe, tmp_path):
    """musubi-tuner's ComfyUI conversion (`lora_unet_…_attention_qkv`, block-diagonal) and ComfyUI's own
    fused names (`diffusion_model.…attention.qkv` with one shared `down`) read into the split layers:
    merged weights equal those of the split file, each piece back at its own rank."""
    from safetensors.torch import save_file

    net = random_net(zimage_parts(pipe), rank=4, alpha=2.0, seed=8)
    split = save_lora(tmp_path / "split.safetensors", net.kohya_modules(), family="zimage", dtype=torch.float32)
    reference = merged_weights(pipe, split)
    save_file(_musubi_comfy(net.kohya_modules()), str(tmp_path / "musubi-comfy.safetensors"))
    lf = load_lora(tmp_path / "musubi-comfy.safetensors")
    assert lf.family == "zimage" and lf.format == "comfyui" and sorted(lf.modules) == sorted(net.kohya_modules())
    assert lf.modules["lora_unet_layers_0_attention_to_k"]["lora_down.weight"].shape == (4, 32)
    got = merged_weights(pipe, tmp_path / "musubi-comfy.safetensors")
    assert all(torch.allclose(got[k], reference[k], atol=1e-6, rtol=0) for k in reference)

    g = torch.Generator().manual_seed(2)
    down, up = torch.randn(3, 32, generator=g), torch.randn(96, 3, generator=g)
    save_file({"diffusion_model.layers.1.attention.qkv.lora_down.weight": down,
               "diffusion_model.layers.1.attention.qkv.lora_up.weight": up,
               "diffusion_model.layers.1.attention.qkv.alpha": torch.tensor(1.5)}, str(tmp_path / "native.safetensors"))
    base, got = weights(pipe), merged_weights(pipe, tmp_path / "native.safetensors")
    delta = 0.5 * up @ down
    for i, q in enumerate(("to_q", "to_k", "to_v")):
        key = f"layers.1.attention.{q}.weight"
        assert torch.allclose(got[key] - base[key], delta[32 * i:32 * (i + 1)], atol=1e-6)


def test_text_encoder_and_misspelt_layers_are_errors_naming_the_file(pipe, tmp_path):
    from safetensors.torch import save_file

    for name, match in (("lora_unet_layers_0_attention_to_x", "not layers of the Z-Image transformer"),
                        ("lora_te_layers_0_self_attn_q_proj", "Qwen3 text encoder takes no LoRA")):
        bad = tmp_path / "bad.safetensors"
        save_file({f"{name}.lora_down.weight": torch.zeros(2, 32), f"{name}.lora_up.weight": torch.zeros(32, 2),
                   "lora_unet_layers_0_attention_to_q.lora_down.weight": torch.zeros(2, 32),
                   "lora_unet_layers_0_attention_to_q.lora_up.weight": torch.zeros(32, 2)}, str(bad),
                  metadata={"ss_base_model_version": "z_image"})
        with pytest.raises(LoraKitError, match=match) as e:
            load_lora(bad)
        assert "bad.safetensors" in str(e.value)


@pytest.mark.parametrize("fmt", LAYOUTS)
def test_diffusers_load_lora_weights_and_fuse_match_lorakit_merge(pipe, tmp_path, fmt):
    """diffusers' ZImagePipeline.load_lora_weights + fuse_lora on lorakit's file (each layout diffusers
    reads: its own, and musubi-tuner's and the ComfyUI one through its Z-Image converter) = lorakit's
    merge, to 1e-5 of the delta, on every Linear of the transformer."""
    net = random_net(zimage_parts(pipe), rank=4, alpha=2.0, std=0.1, seed=7, preset="full")
    path = save_lora(tmp_path / f"{fmt}.safetensors", net.kohya_modules(), format=fmt, family="zimage",
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
    assert changed == len(net.adapters) == 2 * 8 + 8 + 7 + 6
