"""Optimizers (AdamW, AdamW8bit, Lion, Prodigy, Adafactor) and LR schedules with warmup.

Schedules come from diffusers.optimization.get_scheduler; the optimizers from torch,
bitsandbytes, lion-pytorch, prodigyopt and transformers (Adafactor). Only the choice by name lives here.
"""

from __future__ import annotations

import torch

from ..errors import LoraKitError

OPTIMIZERS = ("adamw", "adamw8bit", "lion", "prodigy", "adafactor")


def build_optimizer(name: str, groups: list[dict], *, lr: float, weight_decay: float, betas, eps: float):
    """`groups` are torch param groups (each may carry its own lr)."""
    betas = tuple(betas)
    if name == "adamw":
        # foreach: one fused call per step for hundreds of small LoRA tensors (torch picks it only on GPUs)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise LoraKitError("--optimizer adamw8bit needs bitsandbytes, which is not installed "
                               "(pip install bitsandbytes; it needs a CUDA GPU), or use --optimizer adamw") from None
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "lion":
        try:
            from lion_pytorch import Lion
        except ImportError:
            raise LoraKitError("--optimizer lion needs lion-pytorch (pip install lion-pytorch)") from None
        return Lion(groups, lr=lr, betas=betas if betas != (0.9, 0.999) else (0.9, 0.99), weight_decay=weight_decay)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise LoraKitError("--optimizer prodigy needs prodigyopt (pip install prodigyopt)") from None
        if len({g.get("lr", lr) for g in groups}) > 1:
            raise LoraKitError("--optimizer prodigy finds one step size for all weights: leave --text-encoder-lr "
                               "unset (and use --lr 1.0)")
        return Prodigy(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adafactor":
        # kohya's settings for a LoRA (sd-scripts' docs): the given lr, no relative step, no scaling by the
        # parameter's size, no warmup-init; no first moment (beta1 None) and a factored second moment per
        # matrix (a row and a column of statistics): the smallest state of the choices here.
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False,
                         weight_decay=weight_decay)
    raise LoraKitError(f"unknown optimizer {name!r}: choose from {', '.join(OPTIMIZERS)}")


def build_scheduler(name: str, optimizer, *, warmup_steps: int, total_steps: int, cycles: int = 1,
                    power: float = 1.0):
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                         num_cycles=cycles, power=power)
