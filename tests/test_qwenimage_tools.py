"""Qwen-Image through lorakit's tools: its single file as shipped (with --text-encoders DIR), the
staged prompt inputs, generate, merge, inspect and convert on tiny files."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_support import random_net  # noqa: E402
from qwenimage_support import qwen_parts, tiny_qwenimage_pipeline  # noqa: E402

from lorakit.cli import main  # noqa: E402
from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.families.qwenimage.family import FAMILY  # noqa: E402
from lorakit.formats import inspect_lora, load_lora, load_network, save_lora  # noqa: E402
from lorakit.models import load_model  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny pipeline as a folder, its transformer as one file (as Comfy-Org ship it), a config
    folder for the tiny width, and a random LoRA."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("qwenimage")
    pipe = tiny_qwenimage_pipeline()
    pipe.save_pretrained(root / "model")
    save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}, str(root / "qwen-tiny.safetensors"))
    config = root / "config"
    shutil.copytree(root / "model", config, ignore=shutil.ignore_patterns("*.safetensors"))
    net = random_net(qwen_parts(pipe), rank=4, alpha=2.0, seed=1, std=0.1)
    lora = save_lora(root / "l.safetensors", net.kohya_modules(), family="qwenimage", dtype=torch.float32)
    return pipe, root, config, lora


def _same(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_single_file_as_shipped_with_text_encoders_folder(world, tmp_path):
    from safetensors.torch import load_file, save_file

    pipe, root, config, _ = world
    model = load_model(str(root / "qwen-tiny.safetensors"), config_dir=config, text_encoders=root / "model")
    assert model.family == "qwenimage" and type(model.pipe).__name__ == "QwenImagePipeline"
    assert _same(model.pipe.transformer, pipe.transformer) and _same(model.pipe.text_encoder, pipe.text_encoder)
    assert _same(model.pipe.vae, pipe.vae)
    save_file({"model.diffusion_model." + k: v for k, v in load_file(str(root / "qwen-tiny.safetensors")).items()},
              str(tmp_path / "prefixed.safetensors"))
    again = load_model(str(tmp_path / "prefixed.safetensors"), config_dir=config, components=("unet",))
    assert _same(again.pipe.transformer, pipe.transformer)
    with pytest.raises(LoraKitError, match="Qwen2.5-VL \\(text_encoder\\).*--text-encoders"):
        load_model(str(root / "qwen-tiny.safetensors"), config_dir=config, text_encoders=tmp_path)
    folder = load_model(str(root / "model"))
    assert folder.family == "qwenimage" and _same(folder.pipe.transformer, pipe.transformer)


def test_shipped_config_builds_the_real_model():
    from accelerate import init_empty_weights
    from diffusers import QwenImageTransformer2DModel

    cfg = QwenImageTransformer2DModel.load_config(str(FAMILY.config_dir()), subfolder="transformer")
    with init_empty_weights():
        tr = QwenImageTransformer2DModel.from_config(cfg)
    assert sum(p.numel() for p in tr.parameters()) == 20_430_401_088


def test_prompt_inputs_give_the_pipelines_image(world):
    """The staged inputs (embeddings, masks, real CFG) make the image the pipeline makes from the text."""
    pipe = world[0]
    kw = dict(num_inference_steps=2, width=32, height=32, output_type="np")
    with torch.no_grad():
        inputs = FAMILY.prompt_inputs(pipe, "a photo of sks dog", "a cat", 4.0)
        staged = pipe(**inputs, generator=torch.Generator().manual_seed(0), **kw).images
        direct = pipe(prompt="a photo of sks dog", negative_prompt="a cat", true_cfg_scale=4.0,
                      generator=torch.Generator().manual_seed(0), **kw).images
        plain = pipe(**FAMILY.prompt_inputs(pipe, "a photo of sks dog", "", 1.0),
                     generator=torch.Generator().manual_seed(0), **kw).images
    assert inputs["true_cfg_scale"] == 4.0 and staged.shape == (1, 32, 32, 3)
    assert abs(staged - direct).max() < 1e-5 and abs(staged - plain).max() > 1e-3


def test_generate_with_a_lora_changes_the_image_and_is_undone(world, tmp_path):
    import numpy as np

    from lorakit.generate import LoraSpec, generate

    pipe, root, _, _ = world
    strong = save_lora(tmp_path / "s.safetensors", random_net(qwen_parts(pipe), std=0.5, seed=3).kohya_modules(),
                       family="qwenimage", dtype=torch.float32)
    model = load_model(str(root / "model"))
    kw = dict(steps=2, seed=3, width=32, height=32, guidance=4.0, negative="a cat", progress=False)
    base = generate(model, "a photo of sks dog", **kw)
    with_lora = generate(model, "a photo of sks dog", loras=[LoraSpec(strong, 1.0)], **kw)
    again = generate(model, "a photo of sks dog", **kw)
    a, b, c = (np.asarray(r.images[0], dtype=np.int16) for r in (base, with_lora, again))
    assert a.shape == (32, 32, 3) and np.abs(a - b).mean() > 0.5 and np.abs(a - c).max() <= 1


def test_merge_into_folder_and_single_file(world, tmp_path):
    pipe, root, config, lora = world
    want = copy.deepcopy(pipe)
    load_network(qwen_parts(want), lora, multiplier=0.7).merge()
    for out in ("folder", "single.safetensors"):
        assert main(["merge", "--model", str(root / "model"), "--lora", f"{lora}:0.7", "--out",
                     str(tmp_path / out), "--dtype", "fp32"]) == 0
    assert _same(load_model(str(tmp_path / "folder")).pipe.transformer, want.transformer)
    single = load_model(str(tmp_path / "single.safetensors"), config_dir=config, components=("unet",))
    assert _same(single.pipe.transformer, want.transformer)


def test_inspect_and_cli_convert(world, tmp_path, capsys):
    lora = world[3]
    info = inspect_lora(lora)
    assert info["family"] == "qwenimage" and info["format"] == "kohya" and info["parts"]["unet"] == 2 * 14
    for to in ("diffusers", "comfyui", "onetrainer", "kohya"):
        out = tmp_path / f"{to}.safetensors"
        assert main(["convert", str(lora), "--to", to, "--out", str(out), "--dtype", "fp32"]) == 0
        assert load_lora(out).format == to and load_lora(out).family == "qwenimage"
    assert main(["inspect", str(lora)]) == 0
