"""Shared by the training tests: tiny models saved to folders, small image sets, a base config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lorakit.train.config import TrainConfig

_MODELS: dict[tuple[str, str], Path] = {}


def tiny_model_dir(root: Path, family: str, prediction_type: str = "epsilon") -> Path:
    """A tiny pipeline of `family` saved as a diffusers folder (once per session and root)."""
    key = (str(root), family + prediction_type)
    if key not in _MODELS:
        from lorakit.models.tiny import tiny_pipeline

        pipe = tiny_pipeline(family)
        if prediction_type != "epsilon":
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)
        path = Path(root) / f"{family}-{prediction_type}"
        pipe.save_pretrained(path)
        _MODELS[key] = path
    return _MODELS[key]


def make_images(folder: Path, sizes=((32, 32), (48, 32), (32, 48), (40, 40)), captions: bool = True,
                seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        arr = np.zeros((h, w, 3), np.uint8)
        arr[...] = rng.integers(0, 255, 3)
        arr[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = rng.integers(0, 255, 3)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        if captions:
            (folder / f"img{i}.txt").write_text(f"a square, colour {i}, plain background")
    return folder


def config(model: Path, data: Path, out_dir: Path, **kw) -> TrainConfig:
    base = dict(model=str(model), data=data, out=out_dir / "lora.safetensors", resolution=32, bucket_step=8,
                steps=2, rank=4, progress=False, tensorboard=False, save_dtype="fp32", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def one_thread():
    """Tiny models run 10× faster on one thread than on two contended ones (OpenMP spin-waits)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig, out_dir: str) -> None:
    """One process of a CPU DDP run, set up as `accelerate launch --cpu` would (env + gloo)."""
    import os

    import torch
    from safetensors.torch import save_file

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), ACCELERATE_USE_CPU="true")
    torch.set_num_threads(1)
    from lorakit.train.loop import run

    result = run(cfg)
    save_file(result.network.kohya_state_dict(), f"{out_dir}/rank{rank}.safetensors")


def sd15_pipeline(seed: int = 0):
    """A StableDiffusionPipeline with SD 1.5's exact architecture and default (random) initialisation."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorakit.models.single_file import CONFIGS_DIR
    from lorakit.models.tokenizer import clip_tokenizer

    root = CONFIGS_DIR / "sd15"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae"))
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
    scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(root, subfolder="scheduler"))
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
