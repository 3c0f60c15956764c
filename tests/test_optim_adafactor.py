"""Adafactor as lorakit builds it: it trains, and its state is far smaller than AdamW's."""

from __future__ import annotations

import torch
from torch import nn

from lorakit.train.optim import build_optimizer


def _lora_like(seed: int = 0):
    """A frozen 64→64 layer with a rank-4 LoRA branch to fit a fixed low-rank target change."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(64, 64, generator=g) / 8
    target = base + torch.randn(64, 4, generator=g) @ torch.randn(4, 64, generator=g) / 8
    down = nn.Parameter(torch.randn(4, 64, generator=g) / 8)
    up = nn.Parameter(torch.zeros(64, 4))
    x = torch.randn(256, 64, generator=g)
    return base, target, down, up, x


def _train(name: str, steps: int = 60):
    base, target, down, up, x = _lora_like()
    opt = build_optimizer(name, [{"params": [down, up], "lr": 1e-2}], lr=1e-2, weight_decay=0.0,
                          betas=(0.9, 0.999), eps=1e-8)
    losses = []
    for _ in range(steps):
        loss = (x @ (base + up @ down).T - x @ target.T).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    return losses, state


def test_adafactor_trains_and_keeps_less_state_than_adamw():
    losses, state = _train("adafactor")
    assert losses[-1] < 0.2 * losses[0]
    _, adamw_state = _train("adamw")
    # AdamW: two fp32 moments per value (2 × 4 × 512 values = 4096 bytes); Adafactor: a row and a column per
    # matrix (4 × (4 + 64) × 2 = 544 bytes)
    assert adamw_state == 2 * 4 * 2 * 64 * 4 and state == 4 * (4 + 64) * 2


def test_adafactor_uses_the_given_lr_without_relative_step():
    opt = build_optimizer("adafactor", [{"params": [nn.Parameter(torch.ones(4, 4))]}], lr=3e-4, weight_decay=0.0,
                          betas=(0.9, 0.999), eps=1e-8)
    d = opt.defaults
    assert (d["lr"], d["relative_step"], d["scale_parameter"], d["warmup_init"], d["beta1"]) == \
        (3e-4, False, False, False, None)
