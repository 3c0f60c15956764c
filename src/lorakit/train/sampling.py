"""Images made with the model during training: DreamBooth class images before it, sample grids during it."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from ..data.folders import IMAGE_EXTS
from ..formats.st_io import write_bytes_atomic
from ..generate import read_prompt_file, save_png


def read_prompts(path: Path | None, fallback: str) -> list[str]:
    """The sample prompts file's prompts, or the fallback prompt when there is no file."""
    return [fallback] if path is None else read_prompt_file(path, "sample prompts file")


@torch.no_grad()
def render(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, guidance: float, width: int,
           height: int, batch: int = 8, **options) -> list[Image.Image]:
    """One image per (prompt, seed), each from its own CPU generator so that batching changes nothing;
    `options`: more of the pipeline's call arguments (negative_prompt, clip_skip)."""
    images = []
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    device = denoiser.device
    for k in range(0, len(prompts), batch):
        chunk, chunk_seeds = list(prompts[k:k + batch]), seeds[k:k + batch]
        latents = torch.cat([torch.randn(_latent_shape(pipe, width, height),
                                         generator=torch.Generator("cpu").manual_seed(int(s))) for s in chunk_seeds])
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                   latents=latents.to(device, denoiser.dtype), output_type="pil", **options)
        images.extend(out.images)
    return images


@torch.no_grad()
def render_samples(pipe, prompts: Sequence, *, seed: int, steps: int, guidance: float, size: int,
                   clip_skip: int | None = None) -> list[Image.Image]:
    """One image per SamplePrompt (sample_prompts.py), its own options over the run's: size, steps,
    guidance, seed (else `seed` + its index), negative prompt, sampler; `clip_skip` in kohya's count."""
    from ..samplers import make_scheduler

    images = []
    own = pipe.scheduler
    try:
        for i, p in enumerate(prompts):
            pipe.scheduler = make_scheduler(p.sampler, own.config) if p.sampler else own
            options = {"negative_prompt": [p.negative]} if p.negative else {}
            if clip_skip is not None and clip_skip > 1:
                options["clip_skip"] = clip_skip - 1  # diffusers counts the layers skipped after the last
            images += render(pipe, [p.prompt], [p.seed if p.seed is not None else seed + i],
                             steps=p.steps or steps, guidance=p.guidance if p.guidance is not None else guidance,
                             width=p.width or size, height=p.height or size, **options)
    finally:
        pipe.scheduler = own
    return images


def _latent_shape(pipe, width: int, height: int) -> tuple[int, ...]:
    factor = getattr(pipe, "vae_scale_factor", 8) if getattr(pipe, "vae", None) is not None else 1
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    return (1, denoiser.config.in_channels, height // factor, width // factor)


def count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def read_class_prompts(value: str) -> list[str]:
    """The class prompt, or the prompts of a text file (one a line) when `value` names one."""
    if value.endswith(".txt") and Path(value).is_file():
        return read_prompts(Path(value), value)
    return [value]


def generate_class_images(pipe, folder: Path, prompts: Sequence[str], wanted: int, *, size: int, steps: int,
                          guidance: float, seed: int, progress: bool = True) -> int:
    """Fill `folder` up to `wanted` images made by the base model, cycling through `prompts`; each
    image gets its prompt as caption file. Returns how many were made."""
    from tqdm.auto import tqdm

    from ..data.dataset import mix_seed

    folder.mkdir(parents=True, exist_ok=True)
    have = count_images(folder)
    missing = max(0, wanted - have)
    todo = list(range(have, have + missing))
    bar = tqdm(total=missing, desc="class images", disable=not progress or not missing)
    for start in range(0, len(todo), 8):
        idx = todo[start:start + 8]
        chunk = [prompts[i % len(prompts)] for i in idx]
        images = render(pipe, chunk, [mix_seed(seed, i, 0xC1A55) for i in idx], steps=steps, guidance=guidance,
                        width=size, height=size)
        for i, prompt, image in zip(idx, chunk, images):
            k = i
            while (folder / f"class_{k:05d}.png").exists() or (folder / f"class_{k:05d}.txt").exists():
                k += 100000
            save_png(image, folder / f"class_{k:05d}.png")
            # the caption after the image: a caption never lacks its image
            write_bytes_atomic(folder / f"class_{k:05d}.txt", (prompt + "\n").encode("utf-8"))
        bar.update(len(idx))
    bar.close()
    return missing
