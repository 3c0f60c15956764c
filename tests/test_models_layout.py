"""The original single-file layout on the real architectures, by names and shapes only (meta tensors).

Every shipped config (SD 1.5, 2.1 768-v, 2.1 base, SDXL base) is built on the meta device, written
in the original layout, checked against well-known original keys, and read back by diffusers' own
original → diffusers converters to exactly the names and shapes it started from.
"""

from __future__ import annotations

import pytest
import torch

from lorakit import families
from lorakit.families.unet import original_layout
from lorakit.models import ldm_components
from lorakit.models.checkpoint import Checkpoint, detect_file_family
from lorakit.models.single_file import CONFIGS_DIR

SHIPPED = {"sd15": "sd1", "sd21": "sd2", "sd21-base": "sd2", "sdxl-base": "sdxl"}


def _meta_parts(name: str):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = CONFIGS_DIR / name
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae"))
        tes = [CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))]
        if (root / "text_encoder_2").is_dir():
            tes.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2")))
    return unet, vae, tes


@pytest.fixture(scope="module", params=list(SHIPPED))
def real(request):
    name = request.param
    unet, vae, tes = _meta_parts(name)
    state = original_layout.to_original(SHIPPED[name], unet=unet.state_dict(), unet_config=dict(unet.config),
                                        vae=vae.state_dict(), vae_config=dict(vae.config),
                                        text_encoders=[te.state_dict() for te in tes])
    return name, unet, vae, tes, state


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def test_sd15_original_key_set():
    unet, vae, tes = _meta_parts("sd15")
    state = _shapes(original_layout.to_original(
        "sd1", unet=unet.state_dict(), unet_config=dict(unet.config), vae=vae.state_dict(),
        vae_config=dict(vae.config), text_encoders=[tes[0].state_dict()]))
    by_prefix = {p: sum(k.startswith(p) for k in state) for p in
                 ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")}
    # v1-5-pruned: 686 UNet, 248 VAE, 196 text-encoder tensors (+ position_ids, a buffer transformers
    # no longer saves, and the DDPM schedule buffers, which A1111 recomputes).
    assert by_prefix == {"model.diffusion_model.": 686, "first_stage_model.": 248,
                         "cond_stage_model.transformer.text_model.": 196}
    assert len(state) == 1130
    known = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.4.0.emb_layers.1.weight": (640, 1280),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight": (10240, 1280),
        "model.diffusion_model.middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias": (320,),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
        "first_stage_model.encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "first_stage_model.encoder.mid.attn_1.norm.weight": (512,),
        "first_stage_model.encoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
        "first_stage_model.encoder.norm_out.weight": (512,),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight": (768, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    }
    assert {k: state.get(k) for k in known} == known
    absent = ("first_stage_model.encoder.down.3.downsample.conv.weight",
              "first_stage_model.decoder.up.0.upsample.conv.weight",
              "model.diffusion_model.output_blocks.2.2.conv.weight")
    assert not any(k in state for k in absent)


def test_sd2_and_sdxl_open_clip_layout():
    unet, vae, tes = _meta_parts("sd21")
    sd2 = _shapes(original_layout.text_encoders_to_original("sd2", [tes[0].state_dict()]))
    assert sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] == (3072, 1024)
    assert sd2["cond_stage_model.model.transformer.resblocks.22.mlp.c_fc.weight"] == (4096, 1024)
    assert sd2["cond_stage_model.model.positional_embedding"] == (77, 1024)
    assert sd2["cond_stage_model.model.ln_final.weight"] == (1024,)
    # diffusers keeps 23 of OpenCLIP-H's 24 layers (SD2 reads the penultimate one) and no projection
    assert len(sd2) == 23 * 12 + 4 and "cond_stage_model.model.text_projection" not in sd2
    assert sum(k.startswith("model.diffusion_model.") for k in _shapes(original_layout.unet_to_original(
        unet.state_dict(), dict(unet.config)))) == 686

    unet, vae, tes = _meta_parts("sdxl-base")
    xl = _shapes(original_layout.to_original("sdxl", unet=unet.state_dict(), unet_config=dict(unet.config),
                                             vae=vae.state_dict(), vae_config=dict(vae.config),
                                             text_encoders=[te.state_dict() for te in tes]))
    assert xl["conditioner.embedders.1.model.text_projection"] == (1280, 1280)
    assert xl["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_bias"] == (3840,)
    assert xl["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] == (768,)
    assert xl["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)
    assert xl["model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"] == (640, 2048)
    assert xl["model.diffusion_model.middle_block.1.transformer_blocks.9.attn1.to_q.weight"] == (1280, 1280)
    assert xl["model.diffusion_model.output_blocks.2.2.conv.weight"] == (1280, 1280, 3, 3)
    assert xl["model.diffusion_model.output_blocks.5.2.conv.weight"] == (640, 640, 3, 3)
    # sd_xl_base_1.0 also holds embedders.0 position_ids and embedders.1 logit_scale: 2515 keys
    assert len(xl) == 2513


def test_diffusers_reads_back_the_same_names_and_shapes(real):
    """diffusers' own original → diffusers converters invert ours on every real architecture."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)

    name, unet, vae, tes, state = real
    family = SHIPPED[name]
    back = convert_ldm_unet_checkpoint(state, dict(unet.config))
    assert _shapes(back) == _shapes(unet.state_dict())
    back = convert_ldm_vae_checkpoint(state, dict(vae.config))
    assert _shapes(back) == _shapes(vae.state_dict())
    for i, te in enumerate(tes):
        kind, prefix = families.get(family).checkpoint_text_encoders[i]
        if kind == "open_clip":
            back = convert_open_clip_checkpoint(te, {k: v for k, v in state.items() if k.startswith(prefix)},
                                                prefix=prefix)
        else:
            back = convert_ldm_clip_checkpoint(state)
        back = {k.removeprefix("text_model.") if not hasattr(te, "text_model") else k: v for k, v in back.items()}
        assert _shapes(back) == _shapes(te.state_dict())


def test_family_from_real_keys(real):
    name, *_, state = real
    ckpt = Checkpoint(CONFIGS_DIR / name, _shapes(state))
    assert detect_file_family(ckpt) == SHIPPED[name]


def test_parameter_counts_of_shipped_configs():
    counts = {}
    for name in SHIPPED:
        unet, vae, tes = _meta_parts(name)
        counts[name] = [round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for m in (unet, vae, *tes)]
    assert counts == {"sd15": [859.52, 83.65, 123.06], "sd21": [865.91, 83.65, 340.39],
                      "sd21-base": [865.91, 83.65, 340.39], "sdxl-base": [2567.46, 83.65, 123.06, 694.66]}


def test_unknown_tensor_names_are_refused():
    with pytest.raises(original_layout.LayoutError):
        original_layout.unet_to_original({"bogus.weight": torch.zeros(1)}, {
            "layers_per_block": 2, "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"]})
    with pytest.raises(original_layout.LayoutError):
        ldm_components.vae_to_original({"encoder.mystery.weight": torch.zeros(1)}, {"up_block_types": [1]})
    with pytest.raises(original_layout.LayoutError):
        ldm_components.open_clip_to_original({"text_model.encoder.layers.0.self_attn.q_proj.weight":
                                               torch.zeros(2, 2)}, "p.")


def test_package_import_is_light():
    import subprocess
    import sys

    code = ("import sys, lorakit.models as m; m.BaseModel; m.detect_family; m.load_model; m.save_model; "
            "print('diffusers' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
