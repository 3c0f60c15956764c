"""lorakit: train, use, combine and convert LoRA adapters for Stable Diffusion."""

__version__ = "0.1.0"
