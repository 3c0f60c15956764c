"""`lorakit extract` reads single files and diffusers folders one layer at a time: same result as
loading both models whole, tensor for tensor; the text-encoder rule, NaN/Inf refusal and the real
SDXL/SD 1.5/SD 2.1 single-file names hold that way too."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit.models
from lorakit import families
from lorakit.families.unet import naming
from lorakit.cli import main
from lorakit.ops.extract import extract
from lorakit.families.base import CONFIGS_DIR
from lorakit.lora import ModelParts, select
from lorakit.models import BaseModel, load_model, save_model
from lorakit.models.streaming import StreamedModel, _meta_denoiser, _meta_text_encoder, open_streamed
from lorakit.models.tiny import tiny_pipeline

from models_support import write_config_dir

FAMILIES = ("sd1", "sd2", "sdxl")


def _plant(pipe, family, seed, unet=True, te=True):
    """Rank-2 updates on every `full`-preset layer of the chosen parts (in place)."""
    g = torch.Generator().manual_seed(seed)
    model = BaseModel(pipe, family, "epsilon", "x", "diffusers")
    with torch.no_grad():
        for t in select(model.parts(), "full", unet=unet, text_encoder=te):
            w = t.module.weight
            w.add_((torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w[0].numel(), generator=g) * 0.05)
                   .reshape(w.shape))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Per family: base, tuned (UNet and text encoders changed), tuned_unet (UNet only), each as a
    diffusers folder and as an fp16 original-layout single file, and the config folder."""
    root = tmp_path_factory.mktemp("stream")
    out = {}
    for family in FAMILIES:
        d = root / family
        base = tiny_pipeline(family, seed=0)
        f = {"cfg": write_config_dir(base, d / "cfg")}
        for name, unet, te in (("base", False, False), ("tuned", True, True), ("tuned_unet", True, False)):
            if name == "tuned_unet" and family != "sdxl":
                continue
            pipe = tiny_pipeline(family, seed=0)
            if unet or te:
                _plant(pipe, family, seed=len(name), unet=unet, te=te)
            pipe.save_pretrained(d / name)
            f[name] = d / name
            f[name + "_file"] = save_model(pipe, d / f"{name}.safetensors", dtype=torch.float16)
        out[family] = f
    return out


def _no_whole_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded whole")

    monkeypatch.setattr(lorakit.models, "load_model", refuse)


def _same(a, b):
    assert a.modules.keys() == b.modules.keys()
    for name in a.modules:
        for key, tensor in a.modules[name].items():
            assert torch.equal(tensor, b.modules[name][key]), (name, key)
    assert [p.__dict__ for p in a.parts.values()] == [p.__dict__ for p in b.parts.values()]
    assert a.metadata == b.metadata


@pytest.mark.parametrize("family, layout, tuned", [
    ("sd1", "folder", "tuned"), ("sd1", "file", "tuned"), ("sd2", "file", "tuned"),  # SD2: OpenCLIP's fused q/k/v
    ("sdxl", "folder", "tuned"), ("sdxl", "file", "tuned"), ("sdxl", "file", "tuned_unet")])
def test_streamed_extraction_equals_loading_both_models(saved, monkeypatch, family, layout, tuned):
    f = saved[family]
    suffix = "_file" if layout == "file" else ""
    options = {"config_dir": f["cfg"]} if layout == "file" else {}
    whole = [load_model(str(f[n + suffix]), components=("unet", "text_encoders"), **options) for n in ("base", tuned)]
    reference = extract(whole[0], whole[1], 2, conv_rank=2)
    with monkeypatch.context() as m:
        _no_whole_loading(m)
        streamed = extract(f["base" + suffix], f[tuned + suffix], 2, conv_rank=2, **options)
    reference.metadata = streamed.metadata = {}  # the labels name what was given: paths vs loaded models
    _same(streamed, reference)
    te_parts = families.get(family).te_parts
    for part in te_parts:  # kohya's rule, streamed: text encoders only when they changed by more than min_diff
        assert streamed.parts[part].extracted == (tuned == "tuned")
    assert sum(n.startswith("lora_te") for n in streamed.modules) == (12 * len(te_parts) if tuned == "tuned" else 0)
    assert sum(n.startswith("lora_unet") for n in streamed.modules) > 100


def test_streamed_cli_file_matches_and_says_what_it_did(saved, tmp_path, capsys, monkeypatch):
    f = saved["sdxl"]
    out = tmp_path / "x.safetensors"
    _no_whole_loading(monkeypatch)
    assert main(["extract", "--base", str(f["base_file"]), "--tuned", str(f["tuned_file"]), "--rank", "2",
                 "--config-dir", str(f["cfg"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "te1: 12 modules" in printed and "te2: 12 modules" in printed
    lora = load_file(out)
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in lora
    assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") for k in lora)


def _poison(path, key, dest):
    state = load_file(path)
    state[key] = state[key].clone()
    state[key].view(-1)[1] = float("nan")
    save_file(state, str(dest))
    return dest


@pytest.mark.parametrize("side", ["base", "tuned"])
@pytest.mark.parametrize("key", ["model.diffusion_model.input_blocks.0.0.weight",  # not targeted: checked up front
                                 "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"])
def test_nan_in_a_single_file_is_refused_naming_the_weight(saved, tmp_path, capsys, side, key):
    f = saved["sdxl"]
    bad = _poison(f[side + "_file"], key, tmp_path / f"{side}.safetensors")
    files = {"base": f["base_file"], "tuned": f["tuned_file"], side: bad}
    out = tmp_path / "x.safetensors"
    code = main(["extract", "--base", str(files["base"]), "--tuned", str(files["tuned"]), "--rank", "2",
                 "--config-dir", str(f["cfg"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert key in err and str(bad) in err and "NaN/Inf" in err
    assert not out.exists()


def test_what_cannot_stream_is_loaded_whole(saved, tmp_path):
    f = saved["sd1"]
    pickled = tmp_path / "model.ckpt"
    torch.save(load_file(f["tuned_file"]), pickled)
    assert open_streamed(str(pickled)) is None
    assert open_streamed("org/some-model") is None  # a hub id
    streamed = extract(f["base_file"], f["tuned_file"], 2, config_dir=f["cfg"])
    loaded = extract(f["base_file"], pickled, 2, config_dir=f["cfg"], allow_pickle=True)
    streamed.metadata = loaded.metadata = {}
    _same(loaded, streamed)


def test_a_file_of_another_size_than_its_config_is_refused(saved, tmp_path, capsys):
    f = saved["sd1"]
    state = load_file(f["tuned_file"])
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    state[key] = state[key][:-1]
    save_file(state, str(tmp_path / "odd.safetensors"))
    code = main(["extract", "--base", str(f["base_file"]), "--tuned", str(tmp_path / "odd.safetensors"),
                 "--rank", "2", "--config-dir", str(f["cfg"]), "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "different architecture" in err


class _Header:
    """A file known by its header only: names and shapes."""

    def __init__(self, shapes):
        self.shapes = shapes


@pytest.mark.parametrize("family, config, unet_count, te_count", [
    ("sd1", "sd15", 192, 72), ("sd2", "sd21", 192, 138), ("sdxl", "sdxl-base", 722, 264)])
def test_real_single_file_names(family, config, unet_count, te_count):
    """Every default target of the real architecture is found, with its shape, under the name the
    original single file (as lorakit and A1111 write it: SDXL's conditioner.embedders.0/1) gives it."""
    spec = families.get(family)
    folder = CONFIGS_DIR / config
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    unet = _meta_denoiser(spec, unet_config)
    encoders = [_meta_text_encoder(cls, folder / sub) for sub, cls in zip(spec.text_encoders,
                                                                          spec.text_encoder_classes)]
    original = spec.to_original(unet.state_dict(), unet_config, None, None, [te.state_dict() for te in encoders])
    header = _Header({k: tuple(v.shape) for k, v in original.items()})
    prefixes = {"unet": "model.diffusion_model.", **{p: pre for p, (_, pre) in zip(spec.te_parts,
                                                                                   spec.checkpoint_text_encoders)}}
    model = StreamedModel(family, "epsilon", "x.safetensors", "single_file", ModelParts(
        family, unet, encoders, unet_config), {part: {k: header for k in header.shapes if k.startswith(pre)}
                                               for part, pre in prefixes.items()},
        {}, naming.UNetLayout.from_config(unet_config))
    targets = select(model.parts, "transformer")
    located = [model.locate(t) for t in targets]
    assert sum(t.part == "unet" for t in targets) == unet_count
    assert sum(t.part != "unet" for t in targets) == te_count
    assert len(set(located)) == len(located)  # one tensor (or one third of a fused one) per layer
    keys = {k for k, _ in located}
    if family == "sdxl":
        assert any(k.startswith("conditioner.embedders.0.transformer.text_model.encoder.layers.") for k in keys)
        assert "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight" in keys
        assert "model.diffusion_model.output_blocks.2.1.transformer_blocks.9.ff.net.2.weight" in keys
