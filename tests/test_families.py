"""The family interface by numbers: each family recognises its own real-size checkpoints, LoRAs and
tiny pipelines and no other family claims them; its kohya names, metadata and facts are the known ones."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lorakit import families
from lorakit.errors import LoraKitError
from lorakit.families.base import CONFIGS_DIR
from lorakit.lora import ModelParts, select

# shipped config folder → (family, prediction type)
SHIPPED = {"sd15": ("sd1", "epsilon"), "sd21-base": ("sd2", "epsilon"), "sd21": ("sd2", "v_prediction"),
           "sdxl-base": ("sdxl", "epsilon")}


def _meta_model(folder: str):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = CONFIGS_DIR / folder
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae"))
        tes = [CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))]
        if (root / "text_encoder_2").is_dir():
            tes.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2")))
    return unet, vae, tes


@pytest.fixture(scope="module", params=list(SHIPPED))
def real(request):
    folder = request.param
    name, pt = SHIPPED[folder]
    spec = families.get(name)
    unet, vae, tes = _meta_model(folder)
    state = spec.to_original(denoiser=unet.state_dict(), denoiser_config=dict(unet.config), vae=vae.state_dict(),
                             vae_config=dict(vae.config), text_encoders=[te.state_dict() for te in tes])
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return folder, spec, pt, ModelParts(name, unet, tes, dict(unet.config)), shapes


def _claims(evidence) -> dict[str, int]:
    return {f.name: evidence(f) for f in families.all()}


def test_registry():
    assert families.names() == ("sd1", "sd2", "sdxl", "sd3", "flux", "chroma", "zimage", "flux2", "qwenimage")
    assert [f.label for f in families.all()] == ["SD1", "SD2", "SDXL", "SD3", "Flux.1", "Chroma", "Z-Image", "Flux.2",
                                                 "Qwen-Image"]
    assert families.get("sdxl") is families.get(families.get("sdxl"))
    with pytest.raises(LoraKitError, match=r"unknown family 'sd4' \(sd1, sd2, sdxl, sd3, flux, chroma, zimage, flux2, qwenimage\)"):
        families.get("sd4")
    assert [f.name for f in families.by_pipeline("StableDiffusionPipeline")] == ["sd1", "sd2"]
    assert families.pipeline_classes() == ("StableDiffusionPipeline", "StableDiffusionXLPipeline",
                                           "StableDiffusion3Pipeline", "FluxPipeline", "ChromaPipeline",
                                           "ZImagePipeline", "Flux2KleinPipeline", "Flux2Pipeline",
                                           "QwenImagePipeline")
    with pytest.raises(ValueError, match="registered twice"):
        families.register(families.get("sd1"))


def test_each_family_claims_its_real_checkpoint_alone(real):
    folder, spec, _, _, shapes = real
    claims = _claims(lambda f: f.checkpoint_evidence(shapes, {}))
    assert {n: s for n, s in claims.items() if s} == {spec.name: 4 if spec.name == "sdxl" else 3}, folder
    assert families.detect_checkpoint(shapes) is spec


def test_each_family_claims_its_real_lora_alone(real):
    folder, spec, _, parts, _ = real
    modules = {}
    for t in select(parts, "transformer"):  # a rank-4 LoRA's tensors on every targeted layer, no data
        out, inp, *kernel = t.module.weight.shape  # SD1's proj_in/proj_out are 1x1 convs
        modules[t.name] = {"lora_down.weight": torch.empty(4, inp, *kernel, device="meta"),
                           "lora_up.weight": torch.empty(out, 4, *[1] * len(kernel), device="meta")}
    # kohya's default preset: SD 1.5 192 UNet + 72 TE modules; SD 2.x 192 + 138; SDXL 722 + 72 + 192
    assert len(modules) == {"sd15": 264, "sd21-base": 330, "sd21": 330, "sdxl-base": 986}[folder]
    claims = _claims(lambda f: f.lora_evidence(modules))
    # every module is a layer of the family and the widths are its real ones (2); another family
    # at most has every name (1: SD 1.x and 2.x share names, SDXL takes a UNet's diffusers spelling)
    assert claims[spec.name] == 2 and all(s < 2 for n, s in claims.items() if n != spec.name), claims
    assert families.lora_candidates(modules) == (spec,) and families.detect_lora(modules) is spec


@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl"])
def test_each_family_claims_its_tiny_pipeline_and_checkpoint(name):
    from lorakit.models.tiny import tiny_pipeline

    spec = families.get(name)
    pipe = tiny_pipeline(name)
    assert type(pipe).__name__ == spec.pipeline_class
    assert families.detect_pipeline(pipe) is spec
    # without the UNet loaded, its config stands in
    config = dict(pipe.unet.config)
    pipe.register_modules(unet=None)
    assert families.detect_pipeline(pipe, config) is spec
    pipe = tiny_pipeline(name)
    state = spec.to_original(denoiser=pipe.unet.state_dict(), denoiser_config=dict(pipe.unet.config),
                             vae=pipe.vae.state_dict(), vae_config=dict(pipe.vae.config),
                             text_encoders=[getattr(pipe, n).state_dict() for n in spec.text_encoders])
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert families.detect_checkpoint(shapes) is spec


def test_kohya_names_of_known_modules(real):
    """The names kohya's sd-scripts write for these layers (SDXL in the original SAI spelling)."""
    folder, spec, _, parts, _ = real
    known = {
        "sd1": {("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"):
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                ("unet", "up_blocks.3.attentions.2.proj_out"): "lora_unet_up_blocks_3_attentions_2_proj_out",
                ("te", "text_model.encoder.layers.11.mlp.fc2"): "lora_te_text_model_encoder_layers_11_mlp_fc2"},
        "sdxl": {("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"):
                 "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                 ("unet", "mid_block.attentions.0.transformer_blocks.9.ff.net.2"):
                 "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
                 ("unet", "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_k"):
                 "lora_unet_output_blocks_2_1_transformer_blocks_0_attn2_to_k",
                 ("te1", "text_model.encoder.layers.0.self_attn.q_proj"):
                 "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                 ("te2", "text_model.encoder.layers.31.self_attn.out_proj"):
                 "lora_te2_text_model_encoder_layers_31_self_attn_out_proj"},
    }
    known["sd2"] = {("te", "text_model.encoder.layers.22.self_attn.k_proj"):
                    "lora_te_text_model_encoder_layers_22_self_attn_k_proj",
                    **{k: v for k, v in known["sd1"].items() if k[0] == "unet"}}
    by_path = {(t.part, t.path if t.part == "unet" or t.path.startswith("text_model.") else "text_model." + t.path): t
               for t in parts.targets()}
    for (part, path), name in known[spec.name].items():
        assert by_path[(part, path)].name == name  # what a trained file writes
        if part == "unet":  # the same name without a model, from the family's reference layout
            assert spec.kohya_denoiser_names(path, spec.reference_layout())[0] == name
        else:
            assert spec.te_prefix(spec.te_parts.index(part)) == name.split("_text_model")[0]


@pytest.mark.parametrize("name,v,expected", [
    ("sd1", False, ("sd_v1", "False", "stable-diffusion-v1", "diffusers", 512)),
    ("sd2", False, ("sd_v2", "True", "stable-diffusion-v2-512", "diffusers", 512)),
    ("sd2", True, ("sd_v2_v", "True", "stable-diffusion-v2-768-v", "diffusers", 768)),
    ("sdxl", False, ("sdxl_base_v1-0", "False", "stable-diffusion-xl-v1-base",
                     "https://github.com/Stability-AI/generative-models", 1024)),
])
def test_metadata_values(name, v, expected):
    spec = families.get(name)
    md = spec.lora_metadata(v)
    assert (md["ss_base_model_version"], md["ss_v2"], md["modelspec.architecture"], md["modelspec.implementation"],
            spec.resolution(v)) == (*expected[:2], expected[2] + "/lora", *expected[3:])
    assert spec.checkpoint_metadata(v)["modelspec.architecture"] == expected[2]
    assert spec.checkpoint_metadata(v)["modelspec.resolution"] == f"{expected[4]}x{expected[4]}"
    # a LoRA's metadata names its family again, and only it
    assert families.detect_lora({}, md) is spec
    assert {n for n, s in _claims(lambda f: f.lora_metadata_evidence(md)).items() if s} == {name}


def test_facts_agree_with_the_shipped_configs():
    for folder, (name, pt) in SHIPPED.items():
        spec = families.get(name)
        assert spec.config_dir(pt) == CONFIGS_DIR / folder
        index = json.loads((CONFIGS_DIR / folder / "model_index.json").read_text())
        assert index["_class_name"] == spec.pipeline_class
        assert [k for k in index if k.startswith("text_encoder")] == list(spec.text_encoders)
        assert [k for k in index if k.startswith("tokenizer")] == list(spec.tokenizers)
        assert spec.denoiser in index
        assert spec.objective(pt) == pt
    for spec in families.all():
        assert len(spec.text_encoders) == len(spec.tokenizers) == len(spec.tokenizer_pads)
        assert len(spec.te_prefixes) == len(spec.text_encoders) or not spec.te_prefixes  # Flux.2's LM: no LoRA names
        assert spec.parts == ("unet",) + spec.te_parts
    assert {f.name: (f.bucket_step, f.te_parts, f.tokenizer_pads) for f in families.all()} == {
        "sd1": (64, ("te",), ("<|endoftext|>",)), "sd2": (64, ("te",), ("!",)),
        "sdxl": (32, ("te1", "te2"), ("<|endoftext|>", "!")),
        "sd3": (64, ("te1", "te2", "te3"), ("<|endoftext|>", "!", None)),  # T5's tokenizer cannot ship
        "flux": (64, ("te1", "te3"), ("<|endoftext|>", None)),  # kohya numbers Flux's T5 3, as SD3's
        "chroma": (64, ("te3",), (None,)),  # Flux.1's T5 alone, under the same kohya number
        "zimage": (64, ("te",), (None,)),  # Qwen3: its tokenizer does not ship, it takes no LoRA
        "flux2": (64, (), (None,)),  # its LM (Qwen3, Mistral) never gets a LoRA: no kohya part
        "qwenimage": (64, (), (None,))}  # Qwen2.5-VL likewise
    with pytest.raises(ValueError, match="SD1 models predict epsilon or v_prediction, not flow_matching"):
        families.get("sd1").objective("flow_matching")


def test_lora_and_formats_stay_free_of_diffusers():
    code = ("import sys, lorakit.families, lorakit.lora, lorakit.formats, lorakit.kohya_names; "
            "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
