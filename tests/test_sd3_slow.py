"""Two training steps on SD 3.5 medium's real-size MMDiT (2.2 B parameters, random bf16 weights),
loaded from an SAI-layout single file without text encoders, which come from a --text-encoders folder
(real-size CLIP-L and CLIP-G; a one-layer T5 of T5-XXL's width, since 4.7 B more parameters only
feed the text cache). bf16 because fp32 weights (9 GB) and their copies do not fit comfortably in
this machine's RAM next to other work."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights

sys.path.insert(0, str(Path(__file__).parent))
from models_support import no_network, random_weights  # noqa: E402,F401 - fixture
from dit_support import t5_tokenizer  # noqa: E402
from sd3_support import REAL  # noqa: E402
from train_support import config, make_images  # noqa: E402

from lorakit.formats import load_lora  # noqa: E402
from lorakit.train.loop import run  # noqa: E402

pytestmark = pytest.mark.slow


def test_sd35_medium_single_file_two_steps(tmp_path, no_network):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from lorakit.formats.st_io import serialize, write_bytes_atomic
    from lorakit.families.sd3.loading import original_state, shipped_config

    folder = shipped_config("5-medium")
    with init_empty_weights(include_buffers=False):
        tr = SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(folder, subfolder="transformer"))
    tr = random_weights(tr, torch.bfloat16)
    # The VAE keeps its own initialisation: N(0, 0.02) everywhere gives it posterior variances so wide
    # that a latent drawn from them overflows bf16 in the MMDiT on some draws (a NaN loss, then a stop).
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae")).to(torch.bfloat16)
    assert sum(p.numel() for p in tr.parameters()) == pytest.approx(2.24e9, rel=0.02)
    state = original_state(tr.state_dict(), vae.state_dict(), dict(vae.config), None)
    ckpt = tmp_path / "sd3.5_medium-random.safetensors"
    write_bytes_atomic(ckpt, serialize({k: v.contiguous() for k, v in state.items()}, {}))
    del tr, vae, state
    gc.collect()

    encoders = tmp_path / "encoders"
    with init_empty_weights(include_buffers=False):
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
        t5 = T5EncoderModel(T5Config(**{**T5Config.from_pretrained(folder / "text_encoder_3").to_dict(),
                                        "num_layers": 1, "d_ff": 256, "vocab_size": 64}))
    for name, model in (("text_encoder", clip_l), ("text_encoder_2", clip_g), ("text_encoder_3", t5)):
        random_weights(model, torch.float32).save_pretrained(encoders / name)
    t5_tokenizer().save_pretrained(encoders / "tokenizer_3")
    del clip_l, clip_g, t5
    gc.collect()

    data = make_images(tmp_path / "images", sizes=((256, 256), (256, 256)))
    cfg = config(ckpt, data, tmp_path / "run", resolution=256, bucket_step=64, steps=2, rank=4, trigger="sks",
                 mixed_precision="bf16", save_dtype="bf16", text_encoders=encoders)
    result = run(cfg)
    assert result.model.family == "sd3" and result.model.kind == "single_file"
    assert len(result.losses) == 2 and all(x == x and x < 100 for x in result.losses)
    lf = load_lora(result.out)
    assert lf.format == "diffusers" and lf.metadata["ss_base_model_version"] == "5-medium"
    assert len(lf.modules) == 263  # sd-scripts' default targets on SD 3.5 medium
    assert "lora_unet_joint_blocks_12_x_block_attn2_qkv" in lf.modules
