"""Z-Image (Tongyi-MAI): a single-stream DiT with a Qwen3 text encoder; the family, its names and its loading."""
