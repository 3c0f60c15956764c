"""Flux.1: the family, its BFL ↔ diffusers name tables, its LoRA file layouts and its loading."""
