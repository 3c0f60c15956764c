"""The validation loss: the denoising loss on held-out images, made deterministic so that two
evaluations differ only where the LoRA's weights do.

As sd-scripts does it (docs/validation.md and `train_network.py` at commit 48d368f: the same seed
for the noise and the timestep choice on every validation run, and the timesteps
`linspace(0, 1000, 4 + 2)[1:-1]` = 200, 400, 600, 800, spread over the schedule rather than drawn),
with two differences:
- the noise is drawn from a generator of its own, seeded by (run seed, image), instead of
  re-seeding torch's global generator and restoring it: the training stream is never touched,
  so a run with validation trains bit for bit as one without;
- flow-matching families (SD 3.x, Flux.1) use the same four points 0.2 … 0.8 of their schedule,
  mapped to sigmas as training maps its drawn points (the family's shift included), so they too
  see fixed sigmas.
The loss is the plain mean squared error over every held-out image and point, without min-SNR
or flow weighting and without noise offset: a figure of the model alone, which training options
do not rescale. The LoRA runs in eval mode (no dropout).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Sample, mix_seed
from . import losses

POINTS = 4  # sd-scripts' NUM_VALIDATION_TIMESTEPS


def schedule_points(trainer) -> torch.Tensor:
    """Timestep indices (noise-prediction models) or points in [0, 1) (flow matching), the same every time."""
    if trainer.flow is not None:
        return torch.linspace(0, 1, POINTS + 2, dtype=torch.float64)[1:-1].float()
    n = trainer.num_timesteps
    return torch.from_numpy(np.linspace(0, n, POINTS + 2, dtype=int)[1:-1].astype(np.int64))


@torch.no_grad()
def validation_loss(trainer) -> float | None:
    """The mean denoising loss on the held-out images at the fixed points (None: no images held out)."""
    data = trainer.data
    if not data.validation:
        return None
    net = trainer._unwrapped_network()
    was_training = net.training
    net.eval()
    u = schedule_points(trainer)
    k = len(u)
    per_point = []
    try:
        for i, item in enumerate(data.validation):
            sample = Sample(item, data.placements[item.path], item.caption, False)
            latents = trainer._latents([sample]).float()
            latents = latents.expand(k, *latents.shape[1:]).contiguous()
            g = torch.Generator("cpu").manual_seed(mix_seed(trainer.cfg.seed, i, 0x7A11D))
            noise = losses.noise_like(latents, g)
            job, target, _ = trainer.noised_job([sample] * k, latents, noise, u)
            with trainer.acc.autocast():
                pred = trainer.denoiser([job])[0]
            per_point.append(F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1).double())
    finally:
        if was_training:
            net.train()
    return float(torch.cat(per_point).mean())
