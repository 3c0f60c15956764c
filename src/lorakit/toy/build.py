"""Builds and trains the toy base: a real StableDiffusionPipeline, shrunk to train on a CPU.

Why this shape of model:
- 32x32 RGB images, a tiny AutoencoderKL with a 4x downsample (8x8x4 latents). Pixel space
  would need an identity VAE, and AutoencoderKL cannot be one (its GroupNorms drop each image's
  colour statistics); a real, trained VAE also exercises the encode/scale/decode path of
  lorakit's trainer exactly as SD does. 8x8 latents make a UNet step ~4x cheaper than 16x16.
- The VAE is a general codec: it is trained on random shapes in random colours (the concept
  shape included, as SD's VAE can draw things its UNet never learned). The UNet and the text
  encoder only ever see the base world (SHAPES, never the concept).
- UNet2DConditionModel in SD1's block pattern (cross-attention down/up blocks, a plain
  lowest block), one head per 32 channels; CLIPTextModel with the real 49408-token CLIP vocab
  and hidden size 32, trained jointly; epsilon prediction on the standard DDPM (linear) betas,
  DDIM for sampling.
- Training: Min-SNR-5 weighted epsilon loss, AdamW 1e-3 with warmup and cosine decay, EMA
  0.999, 10% empty captions (for CFG). Min-SNR matters most: with plain MSE the same model drew
  96% of base prompts right after 4000 steps; with Min-SNR it was at 100% by step 4000 of 8000.
- Weights are stored as fp16 (half the size) and load as fp32 (the configs say so).

The shipped base is `build_base` with its defaults (one thread: about 15 min for the VAE and
45 min for the UNet on an idle core).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import world

TEXT_HIDDEN = 32
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                 prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                 timestep_spacing="leading")


def unet_config() -> dict:
    return dict(sample_size=world.IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64, 96), attention_head_dim=(1, 2, 3), norm_num_groups=8,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=TEXT_HIDDEN)


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64),
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                layers_per_block=1, norm_num_groups=8, sample_size=world.IMAGE_SIZE,
                mid_block_add_attention=False)


def text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN, num_hidden_layers=2,
                          num_attention_heads=2, vocab_size=49408, max_position_embeddings=77, projection_dim=32,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu")


def make_pipeline(seed: int = 0):
    """A StableDiffusionPipeline with the toy layout and fresh (seeded, untrained) weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ..models.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_config()), text_encoder=CLIPTextModel(text_config()), tokenizer=clip_tokenizer(),
        unet=UNet2DConditionModel(**unet_config()), scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


# ---------------------------------------------------------------- data


def to_tensor(arrays) -> torch.Tensor:
    """HWC float [0, 1] arrays → NCHW tensor in [-1, 1] (what the VAE eats)."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2 - 1


def _codec_image(rng: random.Random) -> np.ndarray:
    """A training image for the VAE: a world scene, or 1-3 shapes of any colour on any colour."""
    size = world.IMAGE_SIZE
    if rng.random() < 0.5:
        return world.render_array(world.sample_scene(rng, shapes=world.ALL_SHAPES), size)
    img = np.empty((size, size, 3), np.float32)
    img[:] = [rng.random() for _ in range(3)]
    for _ in range(rng.randint(1, 3)):
        side = rng.uniform(0.15, 0.8) * size
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        alpha = world.coverage(rng.choice(world.ALL_SHAPES), cx, cy, side, size)[..., None]
        img = alpha * np.array([rng.random() for _ in range(3)], np.float32) + (1 - alpha) * img
    return img.astype(np.float32)


# ---------------------------------------------------------------- training


def train_vae(vae, steps: int, batch: int = 32, lr: float = 1e-3, seed: int = 0, log: Callable = print) -> None:
    """Reconstruction (L1 + MSE) with a small KL term, then set scaling_factor = 1 / latent std."""
    rng = random.Random(seed)
    with torch.no_grad():  # start with a near-deterministic posterior (std ~0.05), not std 1
        vae.quant_conv.bias[vae.config.latent_channels:] -= 6.0
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.05)
    vae.train()
    t0 = time.time()
    for step in range(steps):
        x = to_tensor([_codec_image(rng) for _ in range(batch)])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        x = to_tensor([_codec_image(rng) for _ in range(256)])
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std, shift_factor=None)
    log(f"vae scaling_factor {1.0 / std:.4f}")


def codec_accuracy(vae, n: int = 200, seed: int = 99) -> float:
    """Share of drawn scenes (concept included) the scorer still reads right after encode+decode."""
    from . import scorer

    scenes = world.sample_scenes(n, seed=seed, shapes=world.ALL_SHAPES)
    with torch.no_grad():
        x = to_tensor([world.render_array(s) for s in scenes])
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
    arrays = ((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    return sum(scorer.score(a) == scorer.expected(s) for a, s in zip(arrays, scenes)) / n


def encode_dataset(pipe, scenes, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means (scaled) and token ids for every scene: the UNet's training set."""
    latents = []
    with torch.no_grad():
        for i in range(0, len(scenes), batch):
            x = to_tensor([world.render_array(s) for s in scenes[i:i + batch]])
            latents.append(pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor)
    ids = tokenize(pipe.tokenizer, [world.caption(s) for s in scenes])
    return torch.cat(latents), ids


def tokenize(tokenizer, texts) -> torch.Tensor:
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_unet(pipe, latents: torch.Tensor, ids: torch.Tensor, steps: int, batch: int = 64, lr: float = 1e-3,
               seed: int = 0, uncond_p: float = 0.1, ema_decay: float = 0.999, min_snr: float | None = 5.0,
               log: Callable = print, on_checkpoint: Callable | None = None, checkpoint_every: int = 0) -> None:
    """Epsilon-prediction training of UNet + text encoder; EMA weights are kept at the end.

    min_snr: Min-SNR-gamma loss weights (min(SNR, gamma) / SNR), which stop the low-noise steps
    from dominating and make the same number of steps go further; None for the plain MSE.
    """
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    unet, te = pipe.unet, pipe.text_encoder
    params = list(unet.parameters()) + list(te.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0))))
    empty = tokenize(pipe.tokenizer, [""])[0]
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight = torch.ones_like(snr) if min_snr is None else snr.clamp(max=min_snr) / snr
    gen = torch.Generator().manual_seed(seed)
    unet.train()
    te.train()
    t0 = time.time()
    running = None
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        x0, tok = latents[idx], ids[idx].clone()
        tok[torch.rand(batch, generator=gen) < uncond_p] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=gen)
        xt = noise_sched.add_noise(x0, noise, t)
        cond = te(tok)[0]
        err = F.mse_loss(unet(xt, t, cond).sample, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (err * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            lr_now = sched.get_last_lr()[0]
            log(f"unet step {step}/{steps} loss {running:.4f} lr {lr_now:.2e} ({time.time() - t0:.0f}s)")
        if on_checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            _swap(params, ema)
            unet.eval()
            te.eval()
            on_checkpoint(step + 1)
            _swap(params, ema)
            unet.train()
            te.train()
    _swap(params, ema)
    unet.eval()
    te.eval()


def _swap(params, ema) -> None:
    with torch.no_grad():
        for p, e in zip(params, ema):
            tmp = p.detach().clone()
            p.copy_(e)
            e.copy_(tmp)


# ---------------------------------------------------------------- saving


_TOKENIZER_CONFIG = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
                     "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_pipeline(pipe, out: Path) -> Path:
    """save_pretrained, then shrink: fp16 tensors (configs keep float32, so a plain load gives fp32
    modules) and the tokenizer as vocab.json + merges.txt (1.5 MB) instead of tokenizer.json (3.6 MB).

    Written to a sibling folder first and swapped in, so a reader never sees half a model.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    from ..atomic import atomic_dir
    from ..models.tokenizer import TOKENIZER_DIR

    out = Path(out)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for f in tmp.rglob("*.safetensors"):
            tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(f).items()}
            save_file(tensors, f, metadata={"format": "pt"})
        tok = tmp / "tokenizer"
        shutil.rmtree(tok)
        tok.mkdir()
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(TOKENIZER_DIR / name, tok / name)
        _write_json(tok / "tokenizer_config.json", _TOKENIZER_CONFIG)
        for f in tmp.rglob("*.json"):  # where it was saved from is no business of the shipped folder
            data = json.loads(f.read_text())
            if isinstance(data, dict) and "_name_or_path" in data:
                del data["_name_or_path"]
                _write_json(f, data)
    return out


def build_base(out: Path, steps: int = 8000, vae_steps: int = 2000, seed: int = 0, n_images: int = 20000,
               batch: int = 64, lr: float = 1e-3, threads: int = 1, vae_from: Path | None = None,
               log: Callable = print, checkpoint_every: int = 0) -> Path:
    """Train the toy base from scratch and save it as a diffusers folder at `out`.

    vae_from: reuse the (trained) VAE of an existing toy base folder instead of training one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.time()
        out = Path(out)
        pipe = make_pipeline(seed)
        if vae_from is not None:
            from diffusers import AutoencoderKL

            pipe.register_modules(vae=AutoencoderKL.from_pretrained(Path(vae_from) / "vae"))
        else:
            train_vae(pipe.vae, vae_steps, seed=seed, log=log)
        pipe.vae.eval().requires_grad_(False)
        log(f"vae: scorer agrees with {codec_accuracy(pipe.vae):.1%} of reconstructions")
        scenes = world.sample_scenes(n_images, seed=seed + 1)
        latents, ids = encode_dataset(pipe, scenes)
        log(f"encoded {len(scenes)} scenes, latents {tuple(latents.shape)}, std {latents.std():.3f}")

        def checkpoint(step):
            save_pipeline(pipe, out)
            log(f"checkpoint at step {step} saved to {out}")

        train_unet(pipe, latents, ids, steps, batch=batch, lr=lr, seed=seed, log=log, on_checkpoint=checkpoint,
                   checkpoint_every=checkpoint_every)
        save_pipeline(pipe, out)
        log(f"built in {time.time() - t0:.0f}s → {out}")
        return out
    finally:
        torch.set_num_threads(previous)
