"""Flux.1 at its real width (3072, 24 heads of 128; the shipped Flux.1-dev config) with fewer blocks,
random weights. The whole Flux.1-dev (11.9 B parameters, 23.8 GB in bf16) does not fit this 23 GB
machine next to other work, so the real architecture is cut to 1 double + 2 single blocks.

- diffusers' converter for sd-scripts Flux files assumes the real width (it splits `linear1` at
  3072 | 3072 | 3072 | 12288), so lorakit's kohya-layout file is checked against
  `load_lora_weights` + `fuse_lora` here, in fp32;
- two training steps in bf16 from a BFL single file with the other parts from --text-encoders.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights

sys.path.insert(0, str(Path(__file__).parent))
from models_support import no_network, random_weights  # noqa: E402,F401 - fixture
from dit_support import clip_config, t5_tokenizer  # noqa: E402
from train_support import config, make_images  # noqa: E402

from lorakit.families.flux.family import FAMILY  # noqa: E402
from lorakit.formats import load_lora, load_network, save_lora  # noqa: E402
from lorakit.lora import LoRANetwork, ModelParts  # noqa: E402

pytestmark = pytest.mark.slow
BLOCKS = dict(num_layers=1, num_single_layers=2)


def _transformer(dtype):
    from diffusers import FluxTransformer2DModel

    cfg = FluxTransformer2DModel.load_config(FAMILY.config_dir(variant="dev"), subfolder="transformer")
    with init_empty_weights(include_buffers=False):
        tr = FluxTransformer2DModel.from_config({**cfg, **BLOCKS})
    return random_weights(tr, dtype)


def test_diffusers_converts_lorakit_sd_scripts_file_at_real_width(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel

    from dit_support import tiny_vae
    from lorakit.models.tokenizer import clip_tokenizer

    tr = _transformer(torch.float32)
    torch.manual_seed(0)
    clip = CLIPTextModel(clip_config(768)).eval()  # pooled width 768, as the real CLIP-L
    pipe = FluxPipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(),
                        text_encoder=clip, tokenizer=clip_tokenizer(), text_encoder_2=None, tokenizer_2=None)
    parts = ModelParts("flux", tr, [clip], dict(tr.config))
    net = LoRANetwork.create(parts, rank=4, alpha=2.0)  # kohya's default targets + CLIP-L
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
    path = save_lora(tmp_path / "kohya.safetensors", net.kohya_modules(), family="flux", dtype=torch.float32)
    del net
    assert load_lora(path).format == "kohya"
    modules = {"transformer": tr, "te1": clip}
    base = {f"{n}.{k}": v.clone() for n, m in modules.items() for k, v in m.state_dict().items()}
    ours_net = load_network(parts, path)
    ours_net.merge()
    deltas = {}
    for n, m in modules.items():
        for k, v in m.state_dict().items():
            d = v - base[f"{n}.{k}"]
            if d.abs().max() > 0:
                deltas[f"{n}.{k}"] = d
    ours_net.unmerge()
    for n, m in modules.items():
        m.load_state_dict({k[len(n) + 1:]: v for k, v in base.items() if k.startswith(n + ".")})
    del ours_net
    gc.collect()
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.fuse_lora(components=["transformer", "text_encoder"], lora_scale=1.0)
    theirs = {f"{n}.{k}".replace(".base_layer.", "."): v for n, m in modules.items()
              for k, v in m.state_dict().items() if ".lora_" not in k}
    assert len(deltas) == 14 + 2 * 6 + 12  # diffusers layers of 1 double and 2 single blocks, CLIP-L's 2 × 6
    for k, d in deltas.items():
        got = theirs[k] - base[k]
        assert (got - d).abs().max() <= 1e-5 * d.abs().max() + 1e-8, k


def test_two_training_steps_real_width_bf16_from_a_bfl_file(tmp_path, no_network):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from lorakit.families.flux import naming as flux_naming
    from lorakit.formats.st_io import serialize, write_bytes_atomic
    from lorakit.train.loop import run

    folder = FAMILY.config_dir(variant="dev")
    tr = _transformer(torch.bfloat16)
    assert sum(p.numel() for p in tr.parameters()) == 687_139_904  # 1 double (340 M) + 2 single (141 M each) + the rest
    ckpt = tmp_path / "flux1-dev-cut.safetensors"
    write_bytes_atomic(ckpt, serialize({k: v.contiguous() for k, v in
                                        flux_naming.diffusers_state_to_bfl(tr.state_dict()).items()}, {}))
    config_dir = tmp_path / "config"
    (config_dir / "transformer").mkdir(parents=True)
    (config_dir / "transformer" / "config.json").write_text(json.dumps({**dict(tr.config), **BLOCKS}))
    for name in ("model_index.json", "scheduler/scheduler_config.json"):
        (config_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (config_dir / name).write_text((folder / name).read_text())
    del tr
    gc.collect()
    encoders = tmp_path / "encoders"
    with init_empty_weights(include_buffers=False):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        clip = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        t5 = T5EncoderModel(T5Config(**{**T5Config.from_pretrained(folder / "text_encoder_2").to_dict(),
                                        "num_layers": 1, "d_ff": 256, "vocab_size": 64}))
    for name, model in (("vae", vae), ("text_encoder", clip), ("text_encoder_2", t5)):
        random_weights(model, torch.float32).save_pretrained(encoders / name)
    t5_tokenizer().save_pretrained(encoders / "tokenizer_2")
    del vae, clip, t5
    gc.collect()

    data = make_images(tmp_path / "images", sizes=((64, 64), (64, 64)))
    cfg = config(ckpt, data, tmp_path / "run", resolution=64, bucket_step=64, steps=2, rank=4, trigger="sks",
                 mixed_precision="bf16", save_dtype="bf16", text_encoders=encoders, config_dir=config_dir)
    result = run(cfg)
    assert result.model.family == "flux" and result.model.kind == "single_file"
    assert len(result.losses) == 2 and all(x == x and x < 100 for x in result.losses)
    lf = load_lora(result.out)
    assert lf.format == "kohya" and lf.metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert sorted(lf.modules) == sorted(flux_naming.default_kohya_names(1, 2, 0))
