"""SD 3.x through lorakit's tools: generate, merge into a diffusers folder and an SAI single file,
LoRA + LoRA merge, resize, extract, inspect, convert (CLI)."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sd3_support import sd3_parts, tiny_sd3_pipeline  # noqa: E402

from lorakit.cli import main  # noqa: E402
from lorakit.formats import inspect_lora, load_lora, load_network, save_lora  # noqa: E402
from lorakit.lora import LoRANetwork  # noqa: E402
from lorakit.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny pipeline saved as a folder, a random SD3 LoRA (kohya layout) and a second one."""
    root = tmp_path_factory.mktemp("sd3tools")
    pipe = tiny_sd3_pipeline()
    pipe.save_pretrained(root / "model")
    loras = []
    for seed, rank in ((1, 4), (2, 2)):
        net = LoRANetwork.create(sd3_parts(pipe), rank=rank, alpha=rank / 2)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.1)
        loras.append(save_lora(root / f"l{seed}.safetensors", net.kohya_modules(), family="sd3", dtype=torch.float32,
                               format="kohya"))
    return pipe, root, loras


def merged(pipe, *loras_weights):
    pipe = copy.deepcopy(pipe)
    for path, w in loras_weights:
        load_network(sd3_parts(pipe), path, multiplier=w).merge()
    return pipe


def test_generate_with_a_lora_changes_the_image_and_is_undone(world):
    from lorakit.generate import LoraSpec, generate

    _, root, loras = world
    model = load_model(str(root / "model"))
    kw = dict(steps=2, seed=3, width=32, height=32, guidance=3.0, progress=False)
    base = generate(model, "a photo of sks dog", **kw)
    with_lora = generate(model, "a photo of sks dog", loras=[LoraSpec(loras[0], 1.0)], **kw)
    again = generate(model, "a photo of sks dog", **kw)
    import numpy as np

    a, b, c = (np.asarray(r.images[0], dtype=np.int16) for r in (base, with_lora, again))
    assert np.abs(a - b).mean() > 0.5 and np.abs(a - c).max() <= 1
    assert "Lora hashes" in with_lora.infotexts[0] and "Sampler: Euler, " in with_lora.infotexts[0]


def test_merge_into_folder_and_sai_single_file(world, tmp_path):
    pipe, root, loras = world
    want = merged(pipe, (loras[0], 0.7))
    assert main(["merge", "--model", str(root / "model"), "--lora", f"{loras[0]}:0.7", "--out",
                 str(tmp_path / "folder"), "--dtype", "fp32"]) == 0
    assert main(["merge", "--model", str(root / "model"), "--lora", f"{loras[0]}:0.7", "--out",
                 str(tmp_path / "sai.safetensors"), "--dtype", "fp32"]) == 0
    cfg = tmp_path / "cfg"
    shutil.copytree(root / "model", cfg, ignore=shutil.ignore_patterns("*.safetensors"))
    for got in (load_model(str(tmp_path / "folder")),
                load_model(str(tmp_path / "sai.safetensors"), config_dir=cfg, text_encoders=root / "model")):
        for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
            a, b = getattr(want, name).state_dict(), getattr(got.pipe, name).state_dict()
            for k in a:
                assert torch.equal(a[k], b[k]), (name, k)


def test_lora_plus_lora_merge_equals_both_merged(world, tmp_path):
    pipe, root, loras = world
    assert main(["merge", "--lora", f"{loras[0]}:0.5", "--lora", f"{loras[1]}:0.25", "--out",
                 str(tmp_path / "ab.safetensors"), "--dtype", "fp32"]) == 0
    ab = load_lora(tmp_path / "ab.safetensors")
    assert ab.family == "sd3" and "lora_unet_joint_blocks_0_x_block_attn_qkv" in ab.modules
    both = merged(pipe, (loras[0], 0.5), (loras[1], 0.25))
    one = merged(pipe, (tmp_path / "ab.safetensors", 1.0))
    for k, v in both.transformer.state_dict().items():
        assert torch.allclose(one.transformer.state_dict()[k], v, atol=1e-6), k


def test_resize_keeps_what_fits_the_rank(world, tmp_path):
    from lorakit.ops.algebra import resize

    _, _, loras = world
    res = resize(loras[1], rank=2, out=tmp_path / "r.safetensors", dtype=torch.float32)  # rank 2 → 2: lossless
    src, out = load_lora(loras[1]), load_lora(tmp_path / "r.safetensors")
    assert out.family == "sd3" and set(out.modules) == set(src.modules)
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
    ex = extract(str(root / "model"), str(tmp_path / "tuned"), rank=2, out=tmp_path / "x.safetensors",
                 dtype=torch.float32)
    lf = load_lora(tmp_path / "x.safetensors")
    assert lf.family == "sd3" and "lora_unet_joint_blocks_1_context_block_attn_qkv" in lf.modules
    again = merged(pipe, (tmp_path / "x.safetensors", 1.0))
    for k, v in tuned.transformer.state_dict().items():
        assert torch.allclose(again.transformer.state_dict()[k], v, atol=1e-5), k
    assert ex is not None


def test_inspect_and_cli_convert(world, tmp_path, capsys):
    _, _, loras = world
    info = inspect_lora(loras[0])
    assert info["family"] == "sd3" and info["format"] == "kohya"
    assert info["parts"]["unet"] == 3 * 10 - 3 + 2 and info["parts"]["te1"] == info["parts"]["te2"] == 12
    assert info["metadata"]["modelspec.architecture"].startswith("stable-diffusion-3")
    for to in ("diffusers", "comfyui", "onetrainer", "kohya"):
        out = tmp_path / f"{to}.safetensors"
        assert main(["convert", str(loras[0]), "--to", to, "--out", str(out), "--dtype", "fp32"]) == 0
        assert load_lora(out).format == to
    assert main(["convert", str(loras[0]), "--to", "peft", "--out", str(tmp_path / "p")]) == 2
    assert "SD3 LoRAs are written as diffusers, kohya, comfyui, onetrainer, not peft" in capsys.readouterr().err
