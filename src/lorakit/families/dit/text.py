"""Prompt → token ids for the DiT families: every tokenizer pads to its own length (CLIP's 77, T5's
per family), as their pipelines' `encode_prompt` does."""

from __future__ import annotations

from typing import Callable, Sequence


def tokenize(tokenizers: Sequence, captions: Sequence[str], length_of: Callable[[int, object], int]) -> list:
    """Ids per tokenizer (None where a tokenizer is absent); `length_of(index, tokenizer)` is the length."""
    out = []
    for i, tok in enumerate(tokenizers):
        if tok is None:
            out.append(None)
            continue
        out.append(tok(list(captions), padding="max_length", max_length=length_of(i, tok), truncation=True,
                       return_tensors="pt").input_ids)
    return out
