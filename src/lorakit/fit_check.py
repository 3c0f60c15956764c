"""Refuse, before any work, a run whose size cannot fit in memory.

An allocator failure deep in a UNet is a traceback after minutes of loading; these estimates are
lower bounds (what the run needs at the very least), compared with what the device has free now,
so they never refuse a run that could have fitted. psutil (an accelerate dependency) reads the
RAM; torch.cuda.mem_get_info the GPU's.
"""

from __future__ import annotations

import torch

from .errors import LoraKitError

# Values a LoRA training step keeps for backward, per sample, in units the families' configs give.
# UNet (SD 1.x/2.x/XL): per latent pixel and per channel of the first level. Measured (saved-tensor
# hooks) on the SD 1.5 UNet with a rank-16 LoRA on the default targets: 454 at 128 px and 377 at
# 256 px plain, 69 and 61 with gradient checkpointing.
UNET_VALUES, UNET_VALUES_CHECKPOINTED = 300, 50
# MMDiT (SD 3.x, Flux.1): per image token, per channel of the token width and per transformer block.
# Measured the same way (rank 16; width 256, 1024 image tokens): Flux 27 per double block and 21 per
# single block with the default preset, 17 and 19 with `attn` (the fewest layers); SD3 27 and 17;
# 1.27 with gradient checkpointing (the block inputs the checkpoints keep).
MMDIT_VALUES, MMDIT_VALUES_CHECKPOINTED = 12, 1
# The constants sit below those measurements, so the estimates stay lower bounds.
# Full-resolution feature maps alive at once in the VAE decoder (a conv's input, its output, a norm).
_DECODE_MAPS = 3


def available_bytes(device: str | torch.device = "cpu") -> int | None:
    """Free memory on the device now (RAM: what can be had without swapping); None when unknown."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        if device.type == "cpu":
            import psutil

            return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no estimate is better than a wrong refusal
        return None
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


def require_fits(need: int, device: str | torch.device, what: str, advice: str) -> None:
    free = available_bytes(device)
    if free is not None and need > free:
        raise LoraKitError(f"{what} needs at least {gib(need)} of memory and {torch.device(device).type} has "
                           f"{gib(free)} free: {advice}")


def image_bytes(width: int, height: int, count: int) -> int:
    """RGB 8-bit PIL images kept in memory."""
    return 3 * width * height * count


def decode_bytes(vae, width: int, height: int, dtype: torch.dtype, family=None) -> int:
    """The VAE decoder's full-resolution feature maps for one image (`family`: whose VAE config it reads)."""
    if vae is None:
        channels = 3
    else:
        channels = family.vae_geometry(vae.config)[1] if family is not None else vae.config.block_out_channels[0]
    return _DECODE_MAPS * channels * width * height * _size(dtype)


def generation_bytes(pipe, width: int, height: int, images_kept: int, grid: bool, family=None) -> int:
    """One image generated at a time (each decoded at full resolution), `images_kept` held, a grid made."""
    vae = getattr(pipe, "vae", None)
    dtype = vae.dtype if vae is not None else torch.float32  # the decoder runs in the VAE's dtype
    held = image_bytes(width, height, images_kept) * (2 if grid and images_kept > 1 else 1)
    return decode_bytes(vae, width, height, dtype, family) + held


def unet_values(config, latent_height: int, latent_width: int, checkpointed: bool) -> int:
    per = UNET_VALUES_CHECKPOINTED if checkpointed else UNET_VALUES
    return latent_height * latent_width * config["block_out_channels"][0] * per


def mmdit_values(tokens: int, width: int, blocks: int, checkpointed: bool) -> int:
    return tokens * width * blocks * (MMDIT_VALUES_CHECKPOINTED if checkpointed else MMDIT_VALUES)


def training_bytes(family, denoiser_config, vae_scale: int, resolution: int, batch_size: int, checkpointed: bool,
                   dtype: torch.dtype = torch.float32) -> int:
    """Activations one micro-batch keeps for backward, at the largest bucket area (resolution²); how many
    values a sample keeps is the family's to say (`Family.training_values`)."""
    side = resolution // vae_scale
    return batch_size * family.training_values(denoiser_config, side, side, checkpointed) * _size(dtype)


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
