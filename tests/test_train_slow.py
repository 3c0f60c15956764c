"""Two training steps on SD 1.5's real architecture (random weights), from a single-file checkpoint
written by the test, with the network off."""

from __future__ import annotations

import gc
import json

import pytest
import torch
from safetensors import safe_open

from lorakit.train.loop import run
from models_support import no_network  # noqa: F401 - fixture
from train_support import config, make_images, sd15_pipeline

pytestmark = pytest.mark.slow


def test_sd15_single_file_two_steps(tmp_path, no_network):
    from lorakit.models import save_model

    ckpt = tmp_path / "sd15-random.safetensors"
    pipe = sd15_pipeline()
    save_model(pipe, ckpt, dtype=torch.float16)
    del pipe
    gc.collect()
    data = make_images(tmp_path / "images", sizes=((256, 256), (320, 192)))
    cfg = config(ckpt, data, tmp_path / "run", resolution=256, bucket_step=64, steps=2, rank=8, trigger="sks",
                 save_dtype="fp16")
    result = run(cfg)
    assert result.model.family == "sd1" and result.model.kind == "single_file"
    assert len(result.losses) == 2 and all(map(lambda x: x == x and x < 10, result.losses))
    with safe_open(str(result.out), "pt") as f:
        keys, md = list(f.keys()), f.metadata()
    modules = {k.split(".")[0] for k in keys}
    # kohya's default targets on SD 1.5: 192 UNet modules and, trained by default, 72 text-encoder ones
    assert len([m for m in modules if m.startswith("lora_unet_")]) == 192
    assert len([m for m in modules if m.startswith("lora_te_")]) == 72 and len(modules) == 264
    assert md["ss_network_train_unet_only"] == "False"
    assert md["ss_base_model_version"] == "sd_v1" and md["ss_network_dim"] == "8"
    assert json.loads(md["ss_bucket_info"])["buckets"] == {"256x256": 1, "320x192": 1}
