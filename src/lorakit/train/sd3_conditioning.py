"""What SD 3.x's transformer is conditioned on, as StableDiffusion3Pipeline builds it:

    hidden = [ CLIP-L ⊕ CLIP-G penultimate hidden states (zero-padded to T5's width) ; T5 last hidden state ]
    pooled = CLIP-L pooled projection ⊕ CLIP-G pooled projection

`encode` is the pipeline's own `encode_prompt` (used for caching, no gradients). When a CLIP
encoder trains, the CLIP half is recomputed each step from token ids with gradients while T5's
half comes from the cache (`encode_t5`): T5 (4.7 B parameters) is never trained here and need not
stay in memory.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

T5_TOKENS = 77  # diffusers' train_dreambooth_lora_sd3.py default (--max_sequence_length)


class SD3Conditioner:
    def __init__(self, pipe, t5_tokens: int = T5_TOKENS):
        self.pipe, self.t5_tokens = pipe, t5_tokens

    @property
    def tokenizers(self) -> list:
        return [self.pipe.tokenizer, self.pipe.tokenizer_2]

    @property
    def encoders(self) -> list:
        """The CLIP encoders (read from the pipeline each time, so releasing them there frees them)."""
        return [getattr(self.pipe, "text_encoder", None), getattr(self.pipe, "text_encoder_2", None)]

    def _device(self):
        te = next((m for m in (*self.encoders, getattr(self.pipe, "text_encoder_3", None)) if m is not None), None)
        return te.device if te is not None else torch.device("cpu")

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> dict[str, Tensor]:
        """{hidden: [B, 77 + T, D], pooled: [B, P], t5: [B, T, D]} with the pipeline's own encoder."""
        hidden, _, pooled, _ = self.pipe.encode_prompt(prompt=list(captions), prompt_2=None, prompt_3=None,
                                                       device=self._device(), do_classifier_free_guidance=False,
                                                       max_sequence_length=self.t5_tokens)
        return {"hidden": hidden, "pooled": pooled, "t5": hidden[:, -self.t5_tokens:]}

    @torch.no_grad()
    def encode_t5(self, captions: Sequence[str]) -> Tensor:
        return self.pipe._get_t5_prompt_embeds(prompt=list(captions), max_sequence_length=self.t5_tokens,
                                               device=self._device())

    def tokenize(self, captions: Sequence[str]) -> list[Tensor]:
        return [tok(list(captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
                    return_tensors="pt").input_ids for tok in self.tokenizers]

    def encode_ids(self, ids: Sequence[Tensor], t5: Tensor) -> dict[str, Tensor]:
        """The same conditioning from CLIP token ids (gradients flow into the CLIP encoders)."""
        hidden, pooled = [], []
        for te, x in zip(self.encoders, ids):
            out = te(x.to(te.device), output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        clip = torch.cat(hidden, dim=-1)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"hidden": torch.cat([clip, t5.to(clip.device, clip.dtype)], dim=-2),
                "pooled": torch.cat(pooled, dim=-1)}
