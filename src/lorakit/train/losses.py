"""The training objective: denoising MSE, min-SNR weighting, noise offset, weight penalties.

Prior preservation is the same loss on class images, weighted by `prior_weight` and added.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


def noise_like(latents: Tensor, generator: torch.Generator, offset: float = 0.0) -> Tensor:
    """Gaussian noise, plus a per-channel constant (noise offset) that teaches very dark/bright images."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
    if offset:
        b, c = latents.shape[:2]
        noise = noise + offset * torch.randn((b, c, 1, 1), generator=generator).to(latents.device)
    return noise


def target(scheduler, prediction_type: str, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def snr(scheduler, timesteps: Tensor) -> Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return ac / (1 - ac)


def min_snr_weights(scheduler, timesteps: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Hang et al. 2023: weight min(SNR, γ)/SNR for ε-prediction, min(SNR, γ)/(SNR+1) for v."""
    s = snr(scheduler, timesteps)
    clipped = torch.clamp(s, max=gamma)
    return clipped / (s + 1) if prediction_type == "v_prediction" else clipped / s


def denoising_loss(pred: Tensor, tgt: Tensor, weights: Tensor | None = None) -> Tensor:
    """MSE per sample (mean over pixels), then weighted mean over the batch; in fp32."""
    per_sample = F.mse_loss(pred.float(), tgt.float(), reduction="none").flatten(1).mean(1)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


def weight_penalty(params: Iterable[Tensor], l1: float = 0.0, l2: float = 0.0) -> Tensor | None:
    """l1·Σ|w| + l2·Σw² over the LoRA weights (None when both are off)."""
    if not (l1 or l2):
        return None
    total = None
    for p in params:
        term = 0.0
        if l1:
            term = term + l1 * p.abs().sum()
        if l2:
            term = term + l2 * p.pow(2).sum()
        total = term if total is None else total + term
    return total
