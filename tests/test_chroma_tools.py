"""Chroma through lorakit's tools: its single file as shipped (with --text-encoders DIR), saving it
back, generate, merge, resize, extract, inspect and convert on tiny files."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from chroma_support import chroma_parts, tiny_chroma_pipeline  # noqa: E402
from dit_support import random_net  # noqa: E402

from lorakit.cli import main  # noqa: E402
from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.families.chroma import naming as chroma_naming  # noqa: E402
from lorakit.formats import inspect_lora, load_lora, load_network, save_lora  # noqa: E402
from lorakit.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny pipeline as a folder, its transformer as lodestones ship it (single file), a config
    folder for the tiny width, and two random LoRAs."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("chroma")
    pipe = tiny_chroma_pipeline()
    pipe.save_pretrained(root / "model")
    save_file({k: v.contiguous() for k, v in chroma_naming.diffusers_state_to_bfl(pipe.transformer.state_dict()).items()},
              str(root / "chroma-tiny.safetensors"))
    config = root / "config"
    shutil.copytree(root / "model", config, ignore=shutil.ignore_patterns("*.safetensors"))
    loras = []
    for seed, rank in ((1, 4), (2, 2)):
        net = random_net(chroma_parts(pipe), rank=rank, alpha=rank / 2, seed=seed, std=0.1)
        loras.append(save_lora(root / f"l{seed}.safetensors", net.kohya_modules(), family="chroma",
                               dtype=torch.float32))
    return pipe, root, config, loras


def merged(pipe, *loras_weights):
    pipe = copy.deepcopy(pipe)
    for path, w in loras_weights:
        load_network(chroma_parts(pipe), path, multiplier=w).merge()
    return pipe


def _same(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_single_file_as_shipped_with_text_encoders_folder(world, tmp_path):
    from safetensors.torch import load_file, save_file

    pipe, root, config, _ = world
    model = load_model(str(root / "chroma-tiny.safetensors"), config_dir=config, text_encoders=root / "model")
    assert model.family == "chroma" and model.kind == "single_file" and type(model.pipe).__name__ == "ChromaPipeline"
    assert _same(model.pipe.transformer, pipe.transformer) and _same(model.pipe.text_encoder, pipe.text_encoder)
    save_file({"model.diffusion_model." + k: v for k, v in load_file(str(root / "chroma-tiny.safetensors")).items()},
              str(tmp_path / "prefixed.safetensors"))
    again = load_model(str(tmp_path / "prefixed.safetensors"), config_dir=config, components=("unet",))
    assert _same(again.pipe.transformer, pipe.transformer)
    with pytest.raises(LoraKitError, match="T5-XXL \\(text_encoder\\).*--text-encoders"):
        load_model(str(root / "chroma-tiny.safetensors"), config_dir=config, text_encoders=tmp_path)
    folder = load_model(str(root / "model"))
    assert folder.family == "chroma" and _same(folder.pipe.transformer, pipe.transformer)


def test_shipped_config_builds_the_real_model():
    from accelerate import init_empty_weights
    from diffusers import ChromaTransformer2DModel

    from lorakit.families.chroma.family import FAMILY

    cfg = ChromaTransformer2DModel.load_config(str(FAMILY.config_dir()), subfolder="transformer")
    with init_empty_weights():
        tr = ChromaTransformer2DModel.from_config(cfg)
    assert sum(p.numel() for p in tr.parameters()) == 8_899_983_424


def test_generate_with_a_lora_changes_the_image_and_is_undone(world, tmp_path):
    import numpy as np

    from lorakit.generate import LoraSpec, generate

    pipe, root, _, _ = world
    strong = save_lora(tmp_path / "s.safetensors", random_net(chroma_parts(pipe), std=0.5, seed=3).kohya_modules(),
                       family="chroma", dtype=torch.float32)
    model = load_model(str(root / "model"))
    kw = dict(steps=2, seed=3, width=32, height=32, guidance=4.0, negative="a cat", progress=False)
    base = generate(model, "a photo of sks dog", **kw)
    with_lora = generate(model, "a photo of sks dog", loras=[LoraSpec(strong, 1.0)], **kw)
    again = generate(model, "a photo of sks dog", **kw)
    a, b, c = (np.asarray(r.images[0], dtype=np.int16) for r in (base, with_lora, again))
    assert a.shape == (32, 32, 3) and np.abs(a - b).mean() > 0.5 and np.abs(a - c).max() <= 1


def test_merge_into_folder_and_single_file(world, tmp_path):
    pipe, root, config, loras = world
    want = merged(pipe, (loras[0], 0.7))
    for out in ("folder", "single.safetensors"):
        assert main(["merge", "--model", str(root / "model"), "--lora", f"{loras[0]}:0.7", "--out",
                     str(tmp_path / out), "--dtype", "fp32"]) == 0
    assert _same(load_model(str(tmp_path / "folder")).pipe.transformer, want.transformer)
    single = load_model(str(tmp_path / "single.safetensors"), config_dir=config, components=("unet",))
    assert _same(single.pipe.transformer, want.transformer)


def test_lora_merge_resize_extract(world, tmp_path):
    from lorakit.ops.algebra import resize
    from lorakit.ops.extract import extract

    pipe, root, _, loras = world
    assert main(["merge", "--lora", f"{loras[0]}:0.5", "--lora", f"{loras[1]}:0.25", "--out",
                 str(tmp_path / "ab.safetensors"), "--dtype", "fp32"]) == 0
    assert load_lora(tmp_path / "ab.safetensors").family == "chroma"
    both, one = merged(pipe, (loras[0], 0.5), (loras[1], 0.25)), merged(pipe, (tmp_path / "ab.safetensors", 1.0))
    for k, v in both.transformer.state_dict().items():
        assert torch.allclose(one.transformer.state_dict()[k], v, atol=1e-6), k
    resize(loras[1], rank=2, out=tmp_path / "r.safetensors", dtype=torch.float32)  # rank 2 already: exact
    src, out = load_lora(loras[1]), load_lora(tmp_path / "r.safetensors")
    assert out.family == "chroma" and set(out.modules) == set(src.modules)
    for n, t in src.modules.items():
        d0 = float(t["alpha"]) / 2 * t["lora_up.weight"] @ t["lora_down.weight"]
        u = out.modules[n]
        assert torch.allclose(d0, float(u["alpha"]) / 2 * u["lora_up.weight"] @ u["lora_down.weight"], atol=1e-6), n
    tuned = merged(pipe, (loras[1], 1.0))
    tuned.save_pretrained(tmp_path / "tuned")
    extract(str(root / "model"), str(tmp_path / "tuned"), rank=2, out=tmp_path / "x.safetensors", dtype=torch.float32)
    assert load_lora(tmp_path / "x.safetensors").family == "chroma"
    again = merged(pipe, (tmp_path / "x.safetensors", 1.0))
    for k, v in tuned.transformer.state_dict().items():
        assert torch.allclose(again.transformer.state_dict()[k], v, atol=1e-5), k


def test_inspect_and_cli_convert(world, tmp_path, capsys):
    _, _, _, loras = world
    info = inspect_lora(loras[0])
    assert info["family"] == "chroma" and info["format"] == "kohya" and info["parts"]["unet"] == 2 * 8 + 2 * 2
    for to in ("diffusers", "comfyui", "kohya"):
        out = tmp_path / f"{to}.safetensors"
        assert main(["convert", str(loras[0]), "--to", to, "--out", str(out), "--dtype", "fp32"]) == 0
        assert load_lora(out).format == to and load_lora(out).family == "chroma"
    assert main(["inspect", str(loras[0])]) == 0
    assert main(["convert", str(loras[0]), "--to", "peft", "--out", str(tmp_path / "p")]) == 2
    assert "Chroma LoRAs are written as kohya, diffusers, comfyui, not peft" in capsys.readouterr().err
