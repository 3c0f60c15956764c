"""A VAE's latents as the denoisers train on them: the posterior's mean, shifted and scaled by the VAE's
config. Below the families (their default encode and decode) and the training conditioning alike."""

from __future__ import annotations

import torch
from torch import Tensor


def latent_scale(vae) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of a VAE; (1, 0) when the model works in pixel space, and a
    scale of 1 for a VAE whose config has none (Flux.2's normalizes with batch-norm statistics)."""
    if vae is None:
        return 1.0, 0.0
    return (float(getattr(vae.config, "scaling_factor", None) or 1.0),
            float(getattr(vae.config, "shift_factor", None) or 0.0))


@torch.no_grad()
def scaled_latents(vae, pixels: Tensor) -> Tensor:
    """An AutoencoderKL's latents: the posterior's mean, shifted and scaled.

    The mean (not a sample) keeps cached and uncached runs identical; the posterior's spread
    is tiny next to the training noise.
    """
    scale, shift = latent_scale(vae)
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return ((dist.mean - shift) * scale).float()
