"""What the denoiser is conditioned on: the family's text encoders turn token ids into its
conditioning (`Family.encode_text`; SDXL adds size `time_ids`, built here). Kept apart from the
pipeline's `encode_prompt` because training needs the token ids (to cache them) and the encoder
call with gradients (text-encoder LoRA).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class Conditioner:
    """The family's tokenizers and text encoders, read from the pipeline by the family's names."""

    def __init__(self, pipe, family: str):
        from .. import families

        self.pipe, self.family = pipe, family
        self.spec = families.get(family)

    @property
    def tokenizers(self) -> list:
        return [getattr(self.pipe, n) for n in self.spec.tokenizers]

    @property
    def encoders(self) -> list:
        """Read from the pipeline each time, so releasing them there frees them."""
        return [getattr(self.pipe, n, None) for n in self.spec.text_encoders]

    def tokenize(self, captions: Sequence[str]) -> list[Tensor]:
        return self.spec.tokenize(self.tokenizers, captions)

    def encode_ids(self, ids: Sequence[Tensor], cached: dict | None = None) -> dict[str, Tensor]:
        """{hidden: [B, 77, D], pooled: [B, P] (SDXL)...}: what the family conditions on; gradients flow
        when enabled. `cached`: the outputs of encoders released after caching (SD3's T5)."""
        return self.spec.encode_text(self.encoders, self.tokenizers, ids, cached)

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> dict[str, Tensor]:
        return self.encode_ids(self.tokenize(captions))


def time_ids(original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> Tensor:
    """SDXL's six size numbers: (orig_h, orig_w, crop_top, crop_left, target_h, target_w).

    `original` and `target` are (width, height) like PIL; SDXL wants height first."""
    return torch.tensor([original[1], original[0], crop[0], crop[1], target[1], target[0]], dtype=torch.float32)


def latent_scale(vae) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of a VAE; (1, 0) when the model works in pixel space."""
    if vae is None:
        return 1.0, 0.0
    return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)


@torch.no_grad()
def encode_pixels(vae, pixels: Tensor, family=None) -> Tensor:
    """Latents the denoiser trains on, as the family's VAE makes them (`Family.encode_latents`;
    `scaled_latents` when no family is given); the pixels themselves in pixel space."""
    if vae is None:
        return pixels
    return family.encode_latents(vae, pixels) if family is not None else scaled_latents(vae, pixels)


@torch.no_grad()
def scaled_latents(vae, pixels: Tensor) -> Tensor:
    """An AutoencoderKL's latents: the posterior's mean, shifted and scaled.

    The mean (not a sample) keeps cached and uncached runs identical; the posterior's spread
    is tiny next to the training noise.
    """
    scale, shift = latent_scale(vae)
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return ((dist.mean - shift) * scale).float()
