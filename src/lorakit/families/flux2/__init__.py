"""Flux.2 (klein 4 B / 9 B with Qwen3, dev 32 B with Mistral): the family, its names and its loading."""
