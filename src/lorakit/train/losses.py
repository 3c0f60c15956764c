"""The training objective: denoising MSE (or sd-scripts' Huber / smooth L1), min-SNR weighting, noise
offset, weight penalties.

Prior preservation is the same loss on class images, weighted by `prior_weight` and added.
"""

from __future__ import annotations

import math
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


def huber_threshold(schedule: str, c: float, scale: float, timesteps: Tensor, *, alphas_cumprod: Tensor | None = None,
                    num_train_timesteps: int = 1000) -> Tensor:
    """The per-sample Huber threshold δ(t), as sd-scripts' `get_huber_threshold_if_needed`: constant
    c·scale; exponential exp(ln(c)·t/T)·scale (c at the last timestep, scale at t = 0); snr
    (1 − c)/(1 + σ_t)² + c with σ_t = √((1 − ᾱ_t)/ᾱ_t) (1 at t = 0, c where the noise dominates)."""
    if schedule == "constant":
        return torch.full((len(timesteps),), c * scale, device=timesteps.device)
    if schedule == "exponential":
        alpha = -math.log(c) / num_train_timesteps
        return torch.exp(-alpha * timesteps.float()) * scale
    if schedule == "snr":
        if alphas_cumprod is None:
            raise ValueError("the snr Huber schedule needs a noise schedule's alphas_cumprod")
        ac = alphas_cumprod.to(timesteps.device)[timesteps.long()].float()
        sigmas = ((1.0 - ac) / ac) ** 0.5
        return (1 - c) / (1 + sigmas) ** 2 + c
    raise ValueError(f"unknown Huber schedule {schedule!r}")


def elementwise_loss(pred: Tensor, tgt: Tensor, loss_type: str = "l2", delta: Tensor | None = None) -> Tensor:
    """sd-scripts' `conditional_loss` without reduction: l2 (x − y)²; huber 2δ(√((x − y)² + δ²) − δ);
    smooth_l1 2(√((x − y)² + δ²) − δ), δ one value per sample."""
    if loss_type == "l2":
        return F.mse_loss(pred, tgt, reduction="none")
    if loss_type not in ("huber", "smooth_l1"):
        raise ValueError(f"unknown loss type {loss_type!r}")
    d = delta.to(pred.device, pred.dtype).view(-1, *([1] * (pred.ndim - 1)))
    root = torch.sqrt((pred - tgt) ** 2 + d ** 2) - d
    return 2 * d * root if loss_type == "huber" else 2 * root


def denoising_loss(pred: Tensor, tgt: Tensor, weights: Tensor | None = None, loss_type: str = "l2",
                   delta: Tensor | None = None) -> Tensor:
    """The loss per sample (mean over pixels), then weighted mean over the batch; in fp32."""
    per_sample = elementwise_loss(pred.float(), tgt.float(), loss_type, delta).flatten(1).mean(1)
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
