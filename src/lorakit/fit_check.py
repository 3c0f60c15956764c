"""Refuse, before any work, a run whose size cannot fit in memory.

An allocator failure deep in a UNet is a traceback after minutes of loading; these estimates are
lower bounds (what the run needs at the very least), compared with what the device has free now,
so they never refuse a run that could have fitted. psutil (an accelerate dependency) reads the
RAM; torch.cuda.mem_get_info the GPU's.
"""

from __future__ import annotations

import torch

from .errors import LoraKitError

# Activation bytes a LoRA training step keeps for backward, per latent pixel and per channel of the
# UNet's first level, per sample, in fp32. Measured (saved-tensor hooks) on the SD 1.5 UNet with a
# rank-16 LoRA on the default targets: 1817 B at 128 px and 1509 B at 256 px plain, 276 and 245 B
# with gradient checkpointing. The constants sit below those, so the estimate stays a lower bound.
_TRAIN_ACTIVATION = 1200
_TRAIN_ACTIVATION_CHECKPOINTED = 200
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


def decode_bytes(vae, width: int, height: int, dtype: torch.dtype) -> int:
    """The VAE decoder's full-resolution feature maps for one image."""
    channels = vae.config.block_out_channels[0] if vae is not None else 3
    return _DECODE_MAPS * channels * width * height * _size(dtype)


def generation_bytes(pipe, width: int, height: int, images_kept: int, grid: bool) -> int:
    """One image generated at a time (each decoded at full resolution), `images_kept` held, a grid made."""
    vae = getattr(pipe, "vae", None)
    dtype = vae.dtype if vae is not None else torch.float32  # the decoder runs in the VAE's dtype
    held = image_bytes(width, height, images_kept) * (2 if grid and images_kept > 1 else 1)
    return decode_bytes(vae, width, height, dtype) + held


def training_bytes(unet_config, vae_scale: int, resolution: int, batch_size: int, checkpointed: bool,
                   dtype: torch.dtype = torch.float32) -> int:
    """Activations one micro-batch keeps for backward, at the largest bucket area (resolution²)."""
    channels = unet_config["block_out_channels"][0]
    latent_pixels = (resolution // vae_scale) ** 2
    per = _TRAIN_ACTIVATION_CHECKPOINTED if checkpointed else _TRAIN_ACTIVATION
    return int(batch_size * latent_pixels * channels * per * _size(dtype) / 4)


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
