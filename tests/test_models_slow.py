"""Full-size SD 1.5 and SD 2.1 files (random fp16 weights) load offline with the shipped configs.

Each test writes a real-architecture checkpoint in the original layout (2.1 GB / 2.6 GB), then
`load_model(path)` must find the family, the config and every tensor without a network.
"""

from __future__ import annotations

import gc

import pytest
import torch
from safetensors.torch import save_file

from lorakit.models import load_model
from lorakit.families.unet import original_layout
from lorakit.models.single_file import CONFIGS_DIR
from models_support import no_network  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def _random_original_file(config: str, family: str, path, seed: int = 0):
    """Random fp16 tensors shaped like the config's models, written in the original layout."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = CONFIGS_DIR / config
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
    g = torch.Generator().manual_seed(seed)

    def fill(module):
        return {k: torch.randn(v.shape, generator=g, dtype=torch.float16) for k, v in module.state_dict().items()}

    states = {"unet": fill(unet), "vae": fill(vae), "te": fill(te)}
    original = original_layout.to_original(family, unet=states["unet"], unet_config=dict(unet.config),
                                           vae=states["vae"], vae_config=dict(vae.config),
                                           text_encoders=[states["te"]])
    save_file(original, str(path))
    probes = {part: {k: s[k].clone() for k in list(s)[:: max(1, len(s) // 6)]} for part, s in states.items()}
    del original, states
    gc.collect()
    return probes


def _check(model, probes, counts):
    modules = {"unet": model.pipe.unet, "vae": model.pipe.vae, "te": model.pipe.text_encoder}
    got = {p: round(sum(t.numel() for t in m.parameters()) / 1e6, 2) for p, m in modules.items()}
    assert got == counts
    for part, tensors in probes.items():
        state = modules[part].state_dict()
        for k, v in tensors.items():
            assert torch.equal(state[k], v), (part, k)
    assert all(t.dtype == torch.float16 and not t.is_meta for m in modules.values() for t in m.parameters())


def test_real_sd15_single_file_loads_offline(tmp_path, no_network):
    path = tmp_path / "sd15-random.safetensors"
    probes = _random_original_file("sd15", "sd1", path)
    model = load_model(str(path), dtype=torch.float16)
    assert (model.family, model.kind, model.prediction_type) == ("sd1", "single_file", "epsilon")
    assert model.pipe.unet.config.cross_attention_dim == 768
    _check(model, probes, {"unet": 859.52, "vae": 83.65, "te": 123.06})
    assert model.pipe.tokenizer("a dog").input_ids == [49406, 320, 1929, 49407]


def test_real_sd21_single_file_loads_offline(tmp_path, no_network):
    """Random weights spread the last output block's norm1 bias: ComfyUI's test says 768-v."""
    path = tmp_path / "sd21-random.safetensors"
    probes = _random_original_file("sd21", "sd2", path, seed=1)
    model = load_model(str(path), dtype=torch.float16)
    assert (model.family, model.prediction_type) == ("sd2", "v_prediction")
    assert model.pipe.unet.config.sample_size == 96 and model.pipe.unet.config.upcast_attention
    assert model.pipe.scheduler.config.prediction_type == "v_prediction"
    _check(model, probes, {"unet": 865.91, "vae": 83.65, "te": 340.39})
