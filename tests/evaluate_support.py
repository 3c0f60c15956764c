"""Tiny CLIP and DINOv2 models built from configs (random weights) and saved as folders with
their image processors (and CLIP's tokenizer), as a user's local copy of the real ones would be."""

from __future__ import annotations

import torch


def save_tiny_clip(path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from lorakit.models.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    clip_tokenizer().save_pretrained(path)
    return path


def save_tiny_dino(path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8)).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                      do_center_crop=True).save_pretrained(path)
    return path


def evaluation_world(root, **extra):
    """A tiny SD 1.x model folder, training images, the tiny CLIP and DINO, and two evaluation prompts
    under `root` (`extra`: further entries, e.g. held-out images)."""
    from train_support import make_images, tiny_model_dir

    prompts = root / "prompts.txt"
    prompts.write_text("zzt a square\na red house\n")
    return {"root": root, "model": tiny_model_dir(root, "sd1"), "data": make_images(root / "data"),
            "clip": save_tiny_clip(root / "clip"), "dino": save_tiny_dino(root / "dino"), "prompts": prompts,
            **extra}
