"""Bad inputs to load_model/save_model: one LoraKitError naming the file and the problem."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from lorakit.errors import LoraKitError
from lorakit.models import BaseModel, load_model, save_model
from lorakit.models.checkpoint import Checkpoint, guessed_prediction_type
from lorakit.models.saver import original_state_dict
from lorakit.models.tiny import tiny_pipeline
from models_support import no_network, write_config_dir  # noqa: F401 - no_network is a fixture


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """A tiny SD1 pipeline, its original-layout tensors, and a config folder for them."""
    root = tmp_path_factory.mktemp("sd1")
    pipe = tiny_pipeline("sd1")
    write_config_dir(pipe, root / "cfg")
    state = original_state_dict(BaseModel(pipe, "sd1", "epsilon", "", "diffusers"), torch.float32)
    save_file(state, str(root / "good.safetensors"))
    return pipe, state, root


def test_missing_path(tmp_path):
    with pytest.raises(LoraKitError, match="no such file") as e:
        load_model(str(tmp_path / "nope.safetensors"))
    assert "nope.safetensors" in str(e.value)
    with pytest.raises(LoraKitError, match="no such file or folder"):
        load_model("../not/a/model")


def test_folder_without_model_index(tmp_path):
    (tmp_path / "stuff.safetensors").write_bytes(b"")
    with pytest.raises(LoraKitError, match="model_index.json is missing.*give the .safetensors file") as e:
        load_model(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_lora_file_is_not_a_base_model(tmp_path):
    path = tmp_path / "dog.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)}, str(path))
    with pytest.raises(LoraKitError, match="not a Stable Diffusion checkpoint.*LoRA file") as e:
        load_model(path)
    assert "dog.safetensors" in str(e.value)


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_file(sd1, tmp_path, keep):
    _, _, root = sd1
    data = (root / "good.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(LoraKitError, match="truncated") as e:
        load_model(path, config_dir=root / "cfg")
    assert "cut.safetensors" in str(e.value)


def test_missing_tensor_is_an_error_not_an_empty_weight(sd1, tmp_path):
    _, state, root = sd1
    partial = dict(state)
    del partial["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"]
    save_file(partial, str(tmp_path / "p.safetensors"))
    with pytest.raises(LoraKitError, match="lacks 1 unet tensor.*attn2.to_k.weight"):
        load_model(tmp_path / "p.safetensors", config_dir=root / "cfg")


def test_missing_part(sd1, tmp_path):
    _, state, root = sd1
    no_vae = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    save_file(no_vae, str(tmp_path / "unet_te.safetensors"))
    with pytest.raises(LoraKitError, match=r"no vae \(first_stage_model"):
        load_model(tmp_path / "unet_te.safetensors", config_dir=root / "cfg")
    model = load_model(tmp_path / "unet_te.safetensors", config_dir=root / "cfg",
                       components=("unet", "text_encoders"))
    assert model.pipe.vae is None
    with pytest.raises(LoraKitError, match="needs every part; the model has no VAE"):
        save_model(model, tmp_path / "out.safetensors")


def test_small_file_against_the_real_config(sd1):
    """Without config_dir a tiny SD1 file meets the shipped SD 1.5 config: a clear mismatch error."""
    _, _, root = sd1
    with pytest.raises(LoraKitError, match="do not fit the config in .*sd15"):
        load_model(root / "good.safetensors", components=("unet",))


def test_config_dir_of_another_family(sd1, tmp_path):
    _, _, root = sd1
    xl = tiny_pipeline("sdxl")
    xl.save_pretrained(tmp_path / "xl")
    with pytest.raises(LoraKitError, match="sd1 checkpoint but the config folder describes a "
                                           "StableDiffusionXLPipeline"):
        load_model(root / "good.safetensors", config_dir=tmp_path / "xl")
    with pytest.raises(LoraKitError, match="model_index.json is missing"):
        load_model(root / "good.safetensors", config_dir=tmp_path)


def test_hub_id_offline_and_not_cached(no_network):
    with pytest.raises(LoraKitError, match="not in the local Hugging Face cache, and HF_HUB_OFFLINE") as e:
        load_model("lorakit-tests/not-a-cached-model")
    assert "lorakit-tests/not-a-cached-model" in str(e.value)


def test_toy_without_toy_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "lorakit.toy", types.ModuleType("lorakit.toy"))
    with pytest.raises(LoraKitError, match="toy base model is not available"):
        load_model("toy")


def test_bad_arguments(sd1, tmp_path):
    _, _, root = sd1
    with pytest.raises(LoraKitError, match="unknown prediction type"):
        load_model(root / "good.safetensors", prediction_type="x0")
    with pytest.raises(LoraKitError, match="unknown component"):
        load_model(root / "good.safetensors", components=("unet", "safety_checker"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LoraKitError, match="not a checkpoint file"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(LoraKitError, match="not pickles"):
        save_model(sd1[0], tmp_path / "out.ckpt")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(LoraKitError, match="refusing to replace"):
        save_model(sd1[0], tmp_path / "busy")
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep"


def test_corrupt_model_index(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(LoraKitError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDMPipeline"}))
    with pytest.raises(LoraKitError, match="unsupported pipeline 'AudioLDMPipeline'"):
        load_model(tmp_path)


def test_sd2_prediction_guess_from_weights(tmp_path):
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(320, generator=g) * 0.2
    for bias, expected in ((spread, "v_prediction"), (spread * 0.1, "epsilon")):
        ckpt = Checkpoint(tmp_path / "x", {key: (320,)}, {}, {key: bias})
        assert guessed_prediction_type(ckpt, "sd2") == expected
    assert guessed_prediction_type(Checkpoint(tmp_path / "x", {}, {}, {}), "sd2") is None
    assert guessed_prediction_type(Checkpoint(tmp_path / "x", {key: (320,)}, {}, {key: spread}), "sd1") is None


def test_folder_with_corrupt_weights(tmp_path):
    pipe = tiny_pipeline("sd1")
    pipe.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(LoraKitError, match="cannot load the diffusers model") as e:
        load_model(tmp_path / "m")
    assert str(tmp_path / "m") in str(e.value)


def test_clip_keys_without_text_model_are_accepted(sd1, tmp_path):
    """Older SD1 files spell cond_stage_model.transformer.encoder.* (no text_model.); A1111 loads them."""
    pipe, state, root = sd1
    old = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
           for k, v in state.items()}
    save_file(old, str(tmp_path / "old.safetensors"))
    model = load_model(tmp_path / "old.safetensors", config_dir=root / "cfg")
    a, b = pipe.text_encoder.state_dict(), model.pipe.text_encoder.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
