"""Quality holds in bf16: a LoRA trained with bf16 frozen weights (fp32 LoRA and optimizer, lorakit's CPU
bf16 path) on SD 1.5's real-size UNet follows the fp32 loss curve on a fixed batch."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.lora import LoRANetwork, ModelParts

CONFIG = "src/lorakit/models/configs/sd15/unet/config.json"
STEPS, SIDE, RANK, LR = 6, 16, 16, 2e-3  # 128 px: 16×16 latents


def _curve(unet, dtype, batch) -> tuple[list[float], torch.Tensor]:
    from lorakit import families

    spec = families.get("sd1")
    torch.manual_seed(0)
    nn.Module.to(unet, dtype=dtype)
    net = LoRANetwork.create(ModelParts("sd1", unet, [], dict(unet.config)), rank=RANK, preset="attn",
                             text_encoder=False, init="gaussian")
    net.apply().train()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=LR)
    noisy, t, hidden, target = batch
    losses = []
    for _ in range(STEPS):
        pred = spec.predict(unet, noisy, t, {"hidden": hidden}, {}, dtype)
        loss = F.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    net.remove()
    # what was learnt: the up factors (zero at the start with the gaussian init), in float64
    update = torch.cat([a.lora_up.weight.detach().double().flatten() for a in net.adapters.values()])
    return losses, update


@pytest.mark.slow
def test_bf16_lora_training_follows_the_fp32_loss_curve():
    from pathlib import Path

    from diffusers import UNet2DConditionModel

    root = Path(__file__).resolve().parents[1]
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads((root / CONFIG).read_text())).requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, SIDE, SIDE, generator=g)
    noise = torch.randn(1, 4, SIDE, SIDE, generator=g)
    a = 0.5  # a mid timestep: x_t = sqrt(a)·x0 + sqrt(1-a)·noise
    batch = (a ** 0.5 * latents + (1 - a) ** 0.5 * noise, torch.tensor([500]), torch.randn(1, 77, 768, generator=g),
             noise)
    fp32, w32 = _curve(unet, torch.float32, batch)
    bf16, w16 = _curve(unet, torch.bfloat16, batch)  # the same UNet, its weights rounded to bf16
    rel = [abs(x - y) / abs(x) for x, y in zip(fp32, bf16)]
    cos = float(w32 @ w16 / (w32.norm() * w16.norm()))
    size = float((w16.norm() - w32.norm()).abs() / w32.norm())
    print(f"\nfp32 {[round(x, 5) for x in fp32]}\nbf16 {[round(x, 5) for x in bf16]}\n"
          f"max relative difference per step {max(rel):.2e}; learnt up factors: cosine {cos:.4f}, norms differ by {size:.2e}")
    assert fp32[-1] < 0.9 * fp32[0] and bf16[-1] < 0.9 * bf16[0]  # both learn
    assert max(rel) <= 5e-3  # measured: 2e-4
    drop32, drop16 = fp32[0] - fp32[-1], bf16[0] - bf16[-1]
    assert abs(drop16 - drop32) <= 0.05 * drop32
    assert cos >= 0.98 and size <= 0.01  # the LoRA learns the same update (measured: 0.997, 1.1e-4)
