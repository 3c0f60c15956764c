"""Flux.1 through lorakit's tools: generate, merge into a diffusers folder and a BFL file, LoRA +
LoRA merge, resize, extract, inspect, convert (CLI); and diffusers' own loader on lorakit's files."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flux_support import flux_parts, tiny_flux_pipeline  # noqa: E402

from lorakit.cli import main  # noqa: E402
from lorakit.formats import inspect_lora, load_lora, load_network, save_lora  # noqa: E402
from lorakit.lora import LoRANetwork  # noqa: E402
from lorakit.models import load_model  # noqa: E402


def random_lora(pipe, path, seed, rank, std=0.1, **kw):
    net = LoRANetwork.create(flux_parts(pipe), rank=rank, alpha=rank / 2, **kw)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std)
    return save_lora(path, net.kohya_modules(), family="flux", dtype=torch.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny pipeline saved as a folder, a random Flux LoRA (kohya layout) and a second one."""
    root = tmp_path_factory.mktemp("fluxtools")
    pipe = tiny_flux_pipeline()
    pipe.save_pretrained(root / "model")
    loras = [random_lora(pipe, root / f"l{seed}.safetensors", seed, rank) for seed, rank in ((1, 4), (2, 2))]
    return pipe, root, loras


def merged(pipe, *loras_weights):
    pipe = copy.deepcopy(pipe)
    for path, w in loras_weights:
        load_network(flux_parts(pipe), path, multiplier=w).merge()
    return pipe


def test_generate_with_a_lora_changes_the_image_and_is_undone(world, tmp_path):
    import numpy as np

    from lorakit.generate import LoraSpec, generate

    pipe, root, _ = world
    loras = [random_lora(pipe, tmp_path / "strong.safetensors", 3, 4, std=0.5)]
    model = load_model(str(root / "model"))
    kw = dict(steps=2, seed=3, width=32, height=32, guidance=3.5, progress=False)
    base = generate(model, "a photo of sks dog", **kw)
    with_lora = generate(model, "a photo of sks dog", loras=[LoraSpec(loras[0], 1.0)], **kw)
    again = generate(model, "a photo of sks dog", **kw)
    a, b, c = (np.asarray(r.images[0], dtype=np.int16) for r in (base, with_lora, again))
    assert a.shape == (32, 32, 3)
    assert np.abs(a - b).mean() > 0.5 and np.abs(a - c).max() <= 1
    assert "Lora hashes" in with_lora.infotexts[0]


def test_merge_into_folder_and_bfl_file(world, tmp_path):
    pipe, root, loras = world
    want = merged(pipe, (loras[0], 0.7))
    assert main(["merge", "--model", str(root / "model"), "--lora", f"{loras[0]}:0.7", "--out",
                 str(tmp_path / "folder"), "--dtype", "fp32"]) == 0
    assert main(["merge", "--model", str(root / "model"), "--lora", f"{loras[0]}:0.7", "--out",
                 str(tmp_path / "bfl.safetensors"), "--dtype", "fp32"]) == 0
    cfg = tmp_path / "cfg"
    shutil.copytree(root / "model", cfg, ignore=shutil.ignore_patterns("*.safetensors"))
    folder = load_model(str(tmp_path / "folder"))
    bfl = load_model(str(tmp_path / "bfl.safetensors"), config_dir=cfg, text_encoders=root / "model")
    for got, names in ((folder, ("transformer", "text_encoder", "vae")), (bfl, ("transformer",))):
        for name in names:
            a, b = getattr(want, name).state_dict(), getattr(got.pipe, name).state_dict()
            for k in a:
                assert torch.equal(a[k], b[k]), (name, k)


def test_lora_plus_lora_merge_equals_both_merged(world, tmp_path):
    pipe, root, loras = world
    assert main(["merge", "--lora", f"{loras[0]}:0.5", "--lora", f"{loras[1]}:0.25", "--out",
                 str(tmp_path / "ab.safetensors"), "--dtype", "fp32"]) == 0
    ab = load_lora(tmp_path / "ab.safetensors")
    assert ab.family == "flux" and "lora_unet_single_blocks_1_linear1" in ab.modules
    both = merged(pipe, (loras[0], 0.5), (loras[1], 0.25))
    one = merged(pipe, (tmp_path / "ab.safetensors", 1.0))
    for k, v in both.transformer.state_dict().items():
        assert torch.allclose(one.transformer.state_dict()[k], v, atol=1e-6), k


def test_resize_lowers_a_fused_rank_3r_module_exactly_when_it_fits(world, tmp_path):
    """Split LoRAs with their own downs fuse to rank 3r; the product has rank ≤ 3r, so resizing to
    3r keeps it exactly, and to r keeps the r largest directions."""
    from lorakit.ops.algebra import resize

    _, _, loras = world
    res = resize(loras[1], rank=2, out=tmp_path / "r.safetensors", dtype=torch.float32)
    src, out = load_lora(loras[1]), load_lora(tmp_path / "r.safetensors")
    assert out.family == "flux" and set(out.modules) == set(src.modules)
    for n, t in src.modules.items():
        d0 = float(t["alpha"]) / 2 * t["lora_up.weight"] @ t["lora_down.weight"]
        u = out.modules[n]
        d1 = float(u["alpha"]) / u["lora_down.weight"].shape[0] * u["lora_up.weight"] @ u["lora_down.weight"]
        assert torch.allclose(d0, d1, atol=1e-6), n
    assert res is not None


def test_extract_recovers_a_merged_lora(world, tmp_path):
    from lorakit.ops.extract import extract

    pipe, root, loras = world
    tuned = merged(pipe, (loras[1], 1.0))
    tuned.save_pretrained(tmp_path / "tuned")
    extract(str(root / "model"), str(tmp_path / "tuned"), rank=2, out=tmp_path / "x.safetensors",
            dtype=torch.float32)
    lf = load_lora(tmp_path / "x.safetensors")
    assert lf.family == "flux" and "lora_unet_double_blocks_1_txt_attn_qkv" in lf.modules
    again = merged(pipe, (tmp_path / "x.safetensors", 1.0))
    for k, v in tuned.transformer.state_dict().items():
        assert torch.allclose(again.transformer.state_dict()[k], v, atol=1e-5), k


def test_inspect_and_cli_convert(world, tmp_path, capsys):
    _, _, loras = world
    info = inspect_lora(loras[0])
    assert info["family"] == "flux" and info["format"] == "kohya"
    assert info["parts"]["unet"] == 2 * 10 + 2 * 3 and info["parts"]["te1"] == 12
    assert info["metadata"]["ss_base_model_version"] == "flux1"
    for to in ("diffusers", "comfyui", "onetrainer", "kohya"):
        out = tmp_path / f"{to}.safetensors"
        assert main(["convert", str(loras[0]), "--to", to, "--out", str(out), "--dtype", "fp32"]) == 0
        assert load_lora(out).format == to
    assert main(["convert", str(loras[0]), "--to", "peft", "--out", str(tmp_path / "p")]) == 2
    assert "Flux.1 LoRAs are written as kohya, diffusers, comfyui, onetrainer, not peft" in capsys.readouterr().err


def _theirs_after_fuse(pipe, path):
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.fuse_lora(components=["transformer", "text_encoder"], lora_scale=1.0)  # Flux's default: transformer only
    try:
        out = {}
        for name, module in (("transformer", pipe.transformer), ("te1", pipe.text_encoder)):
            out.update({f"{name}.{k}".replace(".base_layer.", "."): v.clone()
                        for k, v in module.state_dict().items() if ".lora_" not in k})
        return out
    finally:
        pipe.unfuse_lora()
        pipe.unload_lora_weights()


def _weights(pipe):
    out = {f"transformer.{k}": v.clone() for k, v in pipe.transformer.state_dict().items()}
    out.update({f"te1.{k}": v.clone() for k, v in pipe.text_encoder.state_dict().items()})
    return out


def _compare(pipe, path, min_changed):
    base = _weights(pipe)
    ours = _weights(merged(pipe, (path, 1.0)))
    theirs = _theirs_after_fuse(pipe, path)
    changed = 0
    for k, w in ours.items():
        delta = w - base[k]
        if delta.abs().max() == 0:
            continue
        changed += 1
        other = theirs.get(k)
        assert other is not None, k
        assert (other - w).abs().max() <= 1e-5 * delta.abs().max().item() + 1e-7, k
    assert changed >= min_changed


def test_diffusers_load_lora_weights_and_fuse_match_lorakit_merge_diffusers_layout(tmp_path):
    pipe = tiny_flux_pipeline()
    src = random_lora(pipe, tmp_path / "k.safetensors", 7, 4, std=0.1, preset="full")
    p = save_lora(tmp_path / "d.safetensors", load_lora(src), format="diffusers", dtype=torch.float32)
    _compare(pipe, p, 2 * 14 + 2 * 6 + 10 + 12)  # every split piece of both block kinds, the top layers, CLIP
