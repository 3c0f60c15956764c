"""Generation in stages for the families with a big text encoder (T5-XXL): the prompts are encoded
with the LoRAs' text-encoder modules applied, every text encoder is released, and only then is the
denoiser loaded, so that T5 and the transformer never sit in memory together. The images equal,
bit for bit, those of the whole model loaded at once."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from chroma_support import chroma_parts, tiny_chroma_pipeline  # noqa: E402
from flux_support import flux_parts, tiny_flux_pipeline  # noqa: E402
from sd3_support import sd3_parts, tiny_sd3_pipeline  # noqa: E402

from lorakit import families  # noqa: E402
from lorakit.formats import load_lora, save_lora  # noqa: E402
from lorakit.generate import LoraSpec, generate  # noqa: E402
from lorakit.lora import LoRANetwork  # noqa: E402
from lorakit.models import load_model  # noqa: E402

FAMILIES = {"flux": (tiny_flux_pipeline, flux_parts), "sd3": (tiny_sd3_pipeline, sd3_parts),
            "chroma": (tiny_chroma_pipeline, chroma_parts)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def world(request, tmp_path_factory):
    return _world(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def flux_world(tmp_path_factory):
    return _world("flux", tmp_path_factory)


def _world(family, tmp_path_factory):
    """A tiny pipeline of the family saved as a folder and a random LoRA on its denoiser and, where the
    family trains them, its CLIP text encoders."""
    build, parts = FAMILIES[family]
    root = tmp_path_factory.mktemp(f"staged-{family}")
    pipe = build()
    pipe.save_pretrained(root / "model")
    net = LoRANetwork.create(parts(pipe), rank=4, alpha=2)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    lora = save_lora(root / "lora.safetensors", net.kohya_modules(), family=family, dtype=torch.float32)
    return family, root / "model", lora


def _staged(folder):
    """The model without its denoiser, and the loader that adds it (recording what is held by then)."""
    model = load_model(str(folder), components=("vae", "text_encoders"))
    seen = {}

    def add_denoiser():
        seen["encoders"] = [getattr(model.pipe, n, None) for n in model.spec.text_encoders]
        model.pipe.register_modules(**{model.spec.denoiser: load_model(str(folder), components=("unet",)).unet})

    return model, add_denoiser, seen


KW = dict(negative="blurry", steps=2, seed=3, width=32, height=32, guidance=3.5, progress=False)


def test_staged_generation_equals_the_whole_model(world):
    family, folder, lora = world
    loras = [LoraSpec(lora, 0.8)]
    whole = generate(load_model(str(folder)), "a photo of sks dog", loras=loras, **KW)
    model, add, seen = _staged(folder)
    decode = model.pipe.vae.decode

    def recorded_decode(*a, **k):
        seen.setdefault("denoiser at decode", []).append(model.unet)
        return decode(*a, **k)

    model.pipe.vae.decode = recorded_decode
    staged = generate(model, "a photo of sks dog", loras=loras, add_denoiser=add, **KW)
    assert seen["encoders"] and all(e is None for e in seen["encoders"])  # released before the denoiser
    assert seen["denoiser at decode"] == [None]  # and the denoiser before the VAE decodes
    a, b = (np.asarray(r.images[0]) for r in (whole, staged))
    assert np.array_equal(a, b)
    assert staged.infotexts == whole.infotexts


def test_the_text_stage_applies_the_loras_text_encoder_modules(world, monkeypatch):
    """The embeddings the text stage hands on change with the LoRA where it has text-encoder modules
    (Flux's and SD 3's CLIPs), and not where it has none (Chroma's T5 never gets one)."""
    family, folder, lora = world
    spec = families.get(family)
    captured = []
    original = type(spec).prompt_inputs

    def capture(self, *a, **k):
        out = original(self, *a, **k)
        captured.append(out)
        return out

    monkeypatch.setattr(type(spec), "prompt_inputs", capture)
    for loras in ([], [LoraSpec(lora, 1.0)]):
        model, add, _ = _staged(folder)
        generate(model, "a photo of sks dog", loras=loras, add_denoiser=add, **KW)
    plain, with_lora = captured
    has_te = any(k.startswith("lora_te") for k in load_lora(lora).modules)
    changed = any(not torch.equal(plain[k], with_lora[k]) for k in plain if plain[k] is not None)
    assert has_te == (family != "chroma")
    assert changed == has_te


def test_cli_generates_in_stages_and_equals_the_whole_model(flux_world, tmp_path):
    from PIL import Image

    from lorakit.cli import main

    _, folder, lora = flux_world
    out = tmp_path / "a.png"
    assert main(["generate", "--model", str(folder), "--prompt", "a photo of sks dog", "--lora", f"{lora}:0.8",
                 "--on-the-fly",
                 "--negative", "blurry", "--steps", "2", "--seed", "3", "--width", "32", "--height", "32",
                 "--guidance", "3.5", "--device", "cpu", "--dtype", "fp32", "--out", str(out)]) == 0
    whole = generate(load_model(str(folder)), "a photo of sks dog", loras=[LoraSpec(lora, 0.8)], merge=False,
                     **KW)
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(whole.images[0]))
