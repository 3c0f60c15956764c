"""Save → load round trips on tiny SD1/SD2/SDXL models, offline, through the single-file code path.

A tiny file loads with `config_dir` (a folder the test writes from the tiny pipeline, minus weights
and tokenizers), exactly as a real file loads with the shipped configs. Network access is made
impossible and any attempt fails the test.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open

from lorakit.models import BaseModel, detect_family, load_model, save_model
from lorakit.models.tiny import tiny_pipeline
from models_support import no_network, write_config_dir  # noqa: F401 - no_network is a fixture

FAMILIES = ("sd1", "sd2", "sdxl")


@pytest.fixture(scope="module")
def pipes():
    return {f: tiny_pipeline(f, seed=3) for f in FAMILIES}


@pytest.fixture(scope="module")
def config_dirs(pipes, tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    return {f: write_config_dir(p, root / f) for f, p in pipes.items()}


def modules_of(pipe, family):
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    return {n: getattr(pipe, n) for n in names}


def max_diffs(a, b):
    out = {}
    for name, module in a.items():
        sa, sb = module.state_dict(), b[name].state_dict()
        assert sa.keys() == sb.keys(), name
        out[name] = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_round_trip_is_exact(family, pipes, config_dirs, tmp_path, no_network):
    pipe = pipes[family]
    out = save_model(pipe, tmp_path / "model.safetensors", dtype=torch.float32)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left behind
    model = load_model(str(out), config_dir=config_dirs[family])
    assert (model.family, model.kind, model.prediction_type) == (family, "single_file", "epsilon")
    expected = "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
    assert type(model.pipe).__name__ == expected
    diffs = max_diffs(modules_of(pipe, family), modules_of(model.pipe, family))
    assert diffs == {name: 0.0 for name in diffs}
    ids = model.pipe.tokenizer("a photo of a dog").input_ids
    assert ids == pipe.tokenizer("a photo of a dog").input_ids and ids[0] == 49406 and ids[-1] == 49407
    parts = model.parts()
    assert parts.family == family and parts.unet is model.pipe.unet
    assert len(parts.text_encoders) == (2 if family == "sdxl" else 1)
    assert parts.unet_config["cross_attention_dim"] == pipe.unet.config.cross_attention_dim


@pytest.mark.parametrize("family", FAMILIES)
def test_original_layout_prefixes(family, pipes, tmp_path):
    out = save_model(pipes[family], tmp_path / "m.safetensors")
    with safe_open(str(out), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        dtypes = {f.get_tensor(k).dtype for k in keys}
    assert dtypes == {torch.float16}  # the default save dtype
    heads = {".".join(k.split(".")[:2]) if k.startswith("conditioner") else k.split(".")[0] for k in keys}
    te = {"sd1": {"cond_stage_model"}, "sd2": {"cond_stage_model"},
          "sdxl": {"conditioner.embedders"}}[family]
    assert heads == {"model", "first_stage_model"} | te
    if family == "sd1":
        assert any(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.1.") for k in keys)
    if family == "sd2":
        assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in keys
        assert "cond_stage_model.model.ln_final.weight" in keys
    if family == "sdxl":
        assert "conditioner.embedders.1.model.text_projection" in keys
        assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.bias" in keys
    assert meta["modelspec.architecture"] == {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512",
                                              "sdxl": "stable-diffusion-xl-v1-base"}[family]


def test_fp16_file_loads_in_fp16(pipes, config_dirs, tmp_path, no_network):
    pipe = pipes["sd1"]
    out = save_model(pipe, tmp_path / "half.safetensors")
    model = load_model(out, config_dir=config_dirs["sd1"], dtype=torch.float16)
    assert model.pipe.unet.dtype == torch.float16 and model.pipe.text_encoder.dtype == torch.float16
    a = pipe.unet.state_dict()
    b = model.pipe.unet.state_dict()
    assert all(torch.equal(a[k].half(), b[k]) for k in a)


def test_v_prediction_is_written_and_read_back(pipes, config_dirs, tmp_path, no_network):
    pipe = pipes["sd2"]
    out = save_model(BaseModel(pipe, "sd2", "v_prediction", "", "diffusers"), tmp_path / "v.safetensors")
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["modelspec.prediction_type"] == "v"
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-v2-768-v"
        assert "v_pred" in f.keys()
    model = load_model(out, config_dir=config_dirs["sd2"])
    assert model.prediction_type == "v_prediction"
    assert model.pipe.scheduler.config.prediction_type == "v_prediction"
    forced = load_model(out, config_dir=config_dirs["sd2"], prediction_type="epsilon")
    assert forced.prediction_type == "epsilon" and forced.pipe.scheduler.config.prediction_type == "epsilon"


def test_components_subset(pipes, config_dirs, tmp_path):
    out = save_model(pipes["sdxl"], tmp_path / "xl.safetensors")
    model = load_model(out, config_dir=config_dirs["sdxl"], components=("unet", "text_encoders"))
    assert model.pipe.vae is None and model.pipe.text_encoder_2 is not None
    assert model.family == "sdxl"


def test_diffusers_folder_round_trip(pipes, tmp_path, no_network):
    pipe = pipes["sdxl"]
    folder = save_model(pipe, tmp_path / "xl")
    assert (folder / "model_index.json").is_file()
    assert not list(folder.rglob("*.bin"))
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    assert next(pipe.unet.parameters()).dtype == torch.float32  # the model in memory is untouched
    model = load_model(str(folder))
    assert (model.family, model.kind) == ("sdxl", "diffusers")
    a, b = modules_of(pipe, "sdxl"), modules_of(model.pipe, "sdxl")
    for name in a:
        sa, sb = a[name].state_dict(), b[name].state_dict()
        assert all(torch.equal(sa[k].half().float(), sb[k]) for k in sa), name
    save_model(model, folder, dtype=None)  # replacing an existing model folder
    assert [p.name for p in tmp_path.iterdir()] == ["xl"]


def test_folder_without_tokenizer_gets_the_shipped_one(pipes, tmp_path, no_network):
    pipe = pipes["sd1"]
    pipe.save_pretrained(tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / "tokenizer")
    model = load_model(tmp_path / "m")
    assert model.pipe.tokenizer("a dog").input_ids == pipe.tokenizer("a dog").input_ids


def test_pickle_checkpoint_only_with_consent(pipes, config_dirs, tmp_path, no_network):
    from lorakit.errors import LoraKitError
    from lorakit.models.saver import original_state_dict

    state = original_state_dict(BaseModel(pipes["sd1"], "sd1", "epsilon", "", "diffusers"), torch.float32)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "global_step": 470000}, path)
    with pytest.raises(LoraKitError, match="pickle"):
        load_model(path, config_dir=config_dirs["sd1"])
    model = load_model(path, config_dir=config_dirs["sd1"], allow_pickle=True)
    assert max_diffs(modules_of(pipes["sd1"], "sd1"), modules_of(model.pipe, "sd1"))["unet"] == 0.0


def test_detect_family_of_pipelines(pipes):
    assert {f: detect_family(p) for f, p in pipes.items()} == {f: f for f in FAMILIES}


def test_toy_resolves_through_lorakit_toy(pipes, tmp_path, monkeypatch, no_network):
    import types

    pipes["sd1"].save_pretrained(tmp_path / "toy")
    fake = types.ModuleType("lorakit.toy")
    fake.base_path = lambda: tmp_path / "toy"
    monkeypatch.setitem(__import__("sys").modules, "lorakit.toy", fake)
    model = load_model("toy")
    assert (model.kind, model.source, model.family) == ("toy", "toy", "sd1")


def test_the_offline_guard_sees_connections(no_network):
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    assert len(no_network) == 1
    no_network.clear()


@pytest.mark.parametrize("family", FAMILIES)
def test_family_of_a_folder_loaded_without_its_unet(family, pipes, tmp_path, no_network):
    pipes[family].save_pretrained(tmp_path / family)
    model = load_model(tmp_path / family, components=("vae", "text_encoders"))
    assert model.pipe.unet is None and model.family == family
