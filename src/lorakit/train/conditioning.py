"""What the UNet is conditioned on, for SD1, SD2 and SDXL alike.

SD1/SD2: the text encoder's last hidden state. SDXL: the penultimate hidden states of both
encoders side by side, the second encoder's pooled projection, and `add_time_ids` = original
size, crop top-left and target size, as StableDiffusionXLPipeline builds them. Kept apart from
the pipeline's `encode_prompt` because training needs the token ids (to cache them) and the
encoder call with gradients (text-encoder LoRA).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class Conditioner:
    def __init__(self, pipe, family: str):
        self.pipe, self.family = pipe, family
        self._names = ("", "_2") if family == "sdxl" else ("",)

    @property
    def tokenizers(self) -> list:
        return [getattr(self.pipe, "tokenizer" + n) for n in self._names]

    @property
    def encoders(self) -> list:
        """Read from the pipeline each time, so releasing them there frees them."""
        return [getattr(self.pipe, "text_encoder" + n, None) for n in self._names]

    def tokenize(self, captions: Sequence[str]) -> list[Tensor]:
        return [tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids for tok in self.tokenizers]

    def encode_ids(self, ids: Sequence[Tensor]) -> dict[str, Tensor]:
        """{hidden: [B, 77, D], pooled: [B, P] (SDXL only)}; gradients flow when enabled."""
        if self.family != "sdxl":
            te = self.encoders[0]
            mask = None
            if getattr(te.config, "use_attention_mask", False):
                mask = (ids[0] != self.tokenizers[0].pad_token_id).long().to(te.device)
            return {"hidden": te(ids[0].to(te.device), attention_mask=mask)[0]}
        hidden, pooled = [], None
        for te, x in zip(self.encoders, ids):
            out = te(x.to(te.device), output_hidden_states=True)
            if out[0].ndim == 2:
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return {"hidden": torch.cat(hidden, dim=-1), "pooled": pooled}

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> dict[str, Tensor]:
        return self.encode_ids(self.tokenize(captions))


def time_ids(original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> Tensor:
    """SDXL's six size numbers: (orig_h, orig_w, crop_top, crop_left, target_h, target_w).

    `original` and `target` are (width, height) like PIL; SDXL wants height first."""
    return torch.tensor([original[1], original[0], crop[0], crop[1], target[1], target[0]], dtype=torch.float32)


def latent_scale(vae) -> tuple[float, float]:
    """(scaling_factor, shift_factor) of a VAE; (1, 0) when the model works in pixel space."""
    if vae is None:
        return 1.0, 0.0
    return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)


@torch.no_grad()
def encode_pixels(vae, pixels: Tensor) -> Tensor:
    """Latents the UNet trains on: the VAE posterior's mean, shifted and scaled.

    The mean (not a sample) keeps cached and uncached runs identical; the posterior's spread
    is tiny next to the training noise.
    """
    if vae is None:
        return pixels
    scale, shift = latent_scale(vae)
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return ((dist.mean - shift) * scale).float()
