"""kohya names on the real SD 1.5 and SDXL architectures (built on the meta device: no weights),
and the string rules that turn a kohya name back into the module path without a model."""

import pytest
import torch

from lorakit import kohya_names as naming
from lorakit.formats import kohya_to_path, path_to_kohya
from lorakit.lora import ModelParts, select

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1280)


def _parts(family):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = SD15_UNET if family == "sd1" else SDXL_UNET
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        tes = [CLIPTextModel(CLIPTextConfig(**CLIP_L))]
        if family == "sdxl":
            tes.append(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)))
    return ModelParts(family, unet, tes, config)


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def real(request):
    return request.param, _parts(request.param)


def test_default_preset_counts_and_names(real):
    family, parts = real
    names = [t.name for t in select(parts, "transformer")]
    unet = [n for n in names if n.startswith("lora_unet_")]
    te = [n for n in names if not n.startswith("lora_unet_")]
    assert len(set(names)) == len(names)
    if family == "sd1":
        assert (len(unet), len(te)) == (192, 72)
        assert {naming.part_of(n) for n in te} == {"te"}
        for n in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
                  "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0",
                  "lora_unet_mid_block_attentions_0_proj_in",
                  "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_ff_net_0_proj",
                  "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                  "lora_te_text_model_encoder_layers_11_mlp_fc2"):
            assert n in names, n
    else:
        assert (len(unet), len(te)) == (722, 264)
        assert sum(n.startswith("lora_te1_") for n in te) == 72
        assert sum(n.startswith("lora_te2_") for n in te) == 192
        for n in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                  "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2",
                  "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_v",
                  "lora_unet_output_blocks_0_1_transformer_blocks_0_attn2_to_k",
                  "lora_unet_output_blocks_5_1_proj_out",
                  "lora_te1_text_model_encoder_layers_11_self_attn_out_proj",
                  "lora_te2_text_model_encoder_layers_31_mlp_fc2"):
            assert n in names, n
        assert not any("down_blocks" in n or "up_blocks" in n for n in unet)  # SAI spelling only


def test_string_rules_recover_every_module_path(real):
    """Every Linear/Conv2d of the model (preset `full` and beyond): kohya name → path by rule
    equals the real path, and path → kohya name gives the name lorakit writes."""
    family, parts = real
    checked = 0
    for t in parts.targets():
        part, path = kohya_to_path(t.name)
        expected = t.path if t.part == "unet" else naming.te_path_for_name(t.path)
        assert (part, path) == (t.part, expected), t.name
        assert path_to_kohya(part, path, family) == t.name
        checked += 1
    # SD1.5: 282 UNet + 72 TE layers; SDXL: 794 UNet + 72 + 193 (bigG with its text_projection)
    assert checked == (354 if family == "sd1" else 1059)
