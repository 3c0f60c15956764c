"""The flow-matching objective SD 3.x is trained with (Esser et al. 2024, "Scaling Rectified Flow
Transformers"), as diffusers' `train_dreambooth_lora_sd3.py` and sd-scripts do it:

    x_σ = (1 − σ)·x₀ + σ·ε,   the model predicts the velocity v = ε − x₀,

with σ drawn through `compute_density_for_timestep_sampling` (logit-normal, mode or uniform) on
the shifted sigmas of a FlowMatchEulerDiscreteScheduler, and each sample's squared error weighted
by `compute_loss_weighting_for_sd3` (sigma_sqrt, cosmap, or none). Both come from diffusers so
that the recipe is the reference one, not a re-derivation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

WEIGHTING_SCHEMES = ("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap", "none")


@dataclass
class FlowMatching:
    """Timestep sampling and loss weighting; `scheme` is diffusers' `--weighting_scheme`."""

    scheduler: object  # a FlowMatchEulerDiscreteScheduler as built from its config (1000 train steps)
    scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    def __post_init__(self):
        if self.scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"unknown weighting scheme {self.scheme!r}: choose from {', '.join(WEIGHTING_SCHEMES)}")

    @classmethod
    def from_config(cls, scheduler_config, **kwargs) -> "FlowMatching":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return cls(FlowMatchEulerDiscreteScheduler.from_config(scheduler_config), **kwargs)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def sample(self, batch: int, generator: torch.Generator, mu: float | None = None) -> tuple[Tensor, Tensor]:
        """(timesteps the transformer is given, sigmas) for a batch, from `generator` alone."""
        return self.at(self.draw(batch, generator), mu)

    def draw(self, batch: int, generator: torch.Generator) -> Tensor:
        """Points in [0, 1) of the schedule, drawn with the scheme's density."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        return compute_density_for_timestep_sampling(self.scheme, batch, logit_mean=self.logit_mean,
                                                     logit_std=self.logit_std, mode_scale=self.mode_scale,
                                                     generator=generator)

    def at(self, u: Tensor, mu: float | None = None) -> tuple[Tensor, Tensor]:
        """(timesteps the transformer is given, sigmas) at the points `u` in [0, 1) of the schedule.

        `mu`: a resolution-dependent shift (Flux), applied with the scheduler's own `time_shift`
        to the unshifted sigmas of a scheduler that shifts dynamically (as FluxPipeline samples).
        """
        idx = (u * self.num_train_timesteps).long().clamp(0, len(self.scheduler.timesteps) - 1)
        sigmas = self.scheduler.sigmas[idx].float()
        if mu is None or not self.scheduler.config.get("use_dynamic_shifting", False):
            return self.scheduler.timesteps[idx].float(), sigmas
        sigmas = self.scheduler.time_shift(mu, 1.0, sigmas).float()
        return sigmas * self.num_train_timesteps, sigmas

    @staticmethod
    def noisy(latents: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
        s = sigmas.to(latents.device, latents.dtype).view(-1, *([1] * (latents.dim() - 1)))
        return (1.0 - s) * latents + s * noise

    @staticmethod
    def target(latents: Tensor, noise: Tensor) -> Tensor:
        return noise - latents

    def weights(self, sigmas: Tensor) -> Tensor:
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.scheme, sigmas).float()
