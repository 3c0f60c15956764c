"""Loading SD 3.x: diffusers folders and SAI single files (with or without text encoders inside),
the shipped configs, and saving a merged model as an SAI single file."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from models_support import no_network  # noqa: E402,F401
from sd3_support import REAL, tiny_sd3_pipeline  # noqa: E402

from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.models import load_model  # noqa: E402
from lorakit.families.sd3 import loading as sd3_loading  # noqa: E402

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny pipeline as a diffusers folder, a config-only folder, and SAI single files."""
    root = tmp_path_factory.mktemp("sd3")
    pipe = tiny_sd3_pipeline()
    pipe.save_pretrained(root / "folder")
    cfg = root / "config"
    shutil.copytree(root / "folder", cfg)
    for f in list(cfg.rglob("*.safetensors")):
        f.unlink()
    for tok in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        shutil.rmtree(cfg / tok)
    sd3_loading.save_single_file(pipe, root / "with_encoders.safetensors")
    sd3_loading.save_single_file(pipe, root / "bare.safetensors", include_text_encoders=False)
    return pipe, root, cfg


def same_weights(a, b):
    for name in COMPONENTS:
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert set(sa) == set(sb), name
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (name, k)


def test_shipped_configs_build_the_real_architectures():
    """The shipped transformer configs are SD 3.5 large / 3.5 medium / 3 medium (checked on meta)."""
    from diffusers import SD3Transformer2DModel

    for variant, ref in (("5-large", "sd35-large"), ("5-medium", "sd35-medium"), ("medium", "sd3-medium")):
        folder = sd3_loading.shipped_config(variant)
        config = SD3Transformer2DModel.load_config(str(folder), subfolder="transformer")
        for k, v in REAL[ref].items():
            assert tuple(config[k]) == tuple(v) if isinstance(v, tuple) else config[k] == v, (variant, k)
        assert sd3_loading.variant_of_config(config) == variant
        for sub in ("vae", "scheduler", "text_encoder", "text_encoder_2", "text_encoder_3"):
            assert any((folder / sub).glob("*.json")), (variant, sub)
        with torch.device("meta"):
            n = sum(p.numel() for p in SD3Transformer2DModel.from_config(config).parameters())
        assert {"5-large": 8.06e9, "5-medium": 2.24e9, "medium": 2.03e9}[variant] == pytest.approx(n, rel=0.02)


def test_diffusers_folder(saved, no_network):
    pipe, root, _ = saved
    model = load_model(str(root / "folder"))
    assert model.family == "sd3" and model.prediction_type == "flow_matching"
    assert type(model.pipe).__name__ == "StableDiffusion3Pipeline"
    assert len(model.text_encoders) == 3 and model.unet is model.pipe.transformer
    same_weights(model.pipe, pipe)


def test_single_file_with_text_encoders_inside(saved, no_network):
    pipe, root, cfg = saved
    model = load_model(str(root / "with_encoders.safetensors"), config_dir=cfg, text_encoders=root / "folder")
    assert model.family == "sd3" and model.kind == "single_file"
    same_weights(model.pipe, pipe)


def test_single_file_without_text_encoders_takes_them_from_a_folder(saved, no_network):
    pipe, root, cfg = saved
    model = load_model(str(root / "bare.safetensors"), config_dir=cfg, text_encoders=root / "folder")
    same_weights(model.pipe, pipe)


def test_missing_text_encoders_are_named(saved, no_network, tmp_path):
    _, root, cfg = saved
    with pytest.raises(LoraKitError, match=r"CLIP-L \(text_encoder\).*T5-XXL.*--text-encoders") as e:
        load_model(str(root / "bare.safetensors"), config_dir=cfg)
    assert "bare.safetensors" in str(e.value)
    only_clip = tmp_path / "clips"
    for sub in ("text_encoder", "text_encoder_2"):
        shutil.copytree(root / "folder" / sub, only_clip / sub)
    with pytest.raises(LoraKitError, match="T5-XXL .text_encoder_3., the T5 tokenizer"):
        load_model(str(root / "bare.safetensors"), config_dir=cfg, text_encoders=only_clip)


def test_variant_from_keys():
    keys = ["model.diffusion_model.joint_blocks.0.x_block.attn.ln_q.weight"]
    assert sd3_loading.variant(keys) == "5-large"
    assert sd3_loading.variant(keys + ["model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight"]) == "5-medium"
    assert sd3_loading.variant(["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"]) == "medium"
