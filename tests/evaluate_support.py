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
