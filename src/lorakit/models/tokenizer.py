"""The CLIP BPE tokenizer shipped in the package, so single files load with no network.

vocab.json and merges.txt are derived from OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz`
(MIT-licensed, as shipped by open-clip-torch; see configs/clip_tokenizer/LICENSE) exactly as
the hub's `openai/clip-vit-large-patch14` files are: ids match token for token.
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_DIR = Path(__file__).parent / "configs" / "clip_tokenizer"


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """SD1 and SDXL's first tokenizer pad with <|endoftext|>; OpenCLIP ones (SD2, SDXL's second) with "!"."""
    from transformers import CLIPTokenizer

    from ..errors import LoraKitError

    vocab, merges = TOKENIZER_DIR / "vocab.json", TOKENIZER_DIR / "merges.txt"
    for f in (vocab, merges):
        if not f.is_file() or f.stat().st_size == 0:
            raise LoraKitError("the shipped CLIP tokenizer file is missing or empty; reinstall lorakit", f)
    return CLIPTokenizer(str(vocab), str(merges), pad_token=pad_token, model_max_length=77)
