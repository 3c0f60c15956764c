"""Qwen-Image: a 60-block MMDiT with Qwen2.5-VL as its text encoder; the family, its names and its loading."""
