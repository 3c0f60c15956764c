"""Chroma: Flux.1-schnell pruned of its modulation layers, T5 only; the family, its names and its loading."""
