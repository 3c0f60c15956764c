"""What the denoiser is conditioned on: the family's text encoders turn token ids into its
conditioning (`Family.encode_text`; SDXL adds size `time_ids`, built here). Kept apart from the
pipeline's `encode_prompt` because training needs the token ids (to cache them) and the encoder
call with gradients (text-encoder LoRA).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..latents import latent_scale, scaled_latents  # noqa: F401  (their home below the families)


class Conditioner:
    """The family's tokenizers and text encoders, read from the pipeline by the family's names."""

    def __init__(self, pipe, family: str, clip_skip: int | None = None):
        """clip_skip: the CLIP layer the family conditions on (kohya's count), for families that honour it."""
        from .. import families

        self.pipe, self.family = pipe, family
        self.spec = families.get(family)
        self.clip_skip = clip_skip

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
        if self.clip_skip is not None:
            return self.spec.encode_text(self.encoders, self.tokenizers, ids, cached, clip_skip=self.clip_skip)
        return self.spec.encode_text(self.encoders, self.tokenizers, ids, cached)

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> dict[str, Tensor]:
        return self.encode_ids(self.tokenize(captions))


def time_ids(original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> Tensor:
    """SDXL's six size numbers: (orig_h, orig_w, crop_top, crop_left, target_h, target_w).

    `original` and `target` are (width, height) like PIL; SDXL wants height first."""
    return torch.tensor([original[1], original[0], crop[0], crop[1], target[1], target[0]], dtype=torch.float32)


@torch.no_grad()
def encode_pixels(vae, pixels: Tensor, family=None) -> Tensor:
    """Latents the denoiser trains on, as the family's VAE makes them (`Family.encode_latents`;
    `scaled_latents` when no family is given); the pixels themselves in pixel space."""
    if vae is None:
        return pixels
    return family.encode_latents(vae, pixels) if family is not None else scaled_latents(vae, pixels)


