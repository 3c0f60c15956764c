"""A1111's `<lora:name:te:unet>` and the LoRA Block Weight extension's `lbw=` in prompts: each layer's
ΔW lands at the weight done by hand, names are found under --lora-dir recursively, bad tags are one line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.generate import attach_loras, detach_loras, find_lora, split_prompt_loras
from lorakit.models.base import BaseModel
from lorakit.models.tiny import tiny_pipeline
from lorakit.prompt_tags import PRESETS, parse

from conftest import tiny_model_with_lora

# The extension's block of each module of the tiny SD1 UNet (layers_per_block 2; down block 0 and up
# block 1 have attentions), worked out by hand from LDM's numbering: input_blocks.0 is conv_in, down
# block i's layer j is input_blocks.1+3i+j, the middle block M00, up block i's layer j output_blocks.3i+j.
SD1_BLOCKS = {"lora_unet_down_blocks_0_attentions_0_": "IN01", "lora_unet_down_blocks_0_attentions_1_": "IN02",
              "lora_unet_mid_block_": "M00", "lora_unet_up_blocks_1_attentions_0_": "OUT03",
              "lora_unet_up_blocks_1_attentions_1_": "OUT04", "lora_unet_up_blocks_1_attentions_2_": "OUT05"}
# 17 weights on BLOCKID17 = BASE IN01 IN02 IN04 IN05 IN07 IN08 M00 OUT03..OUT11
LBW17 = [0.3, 0.7, -0.4, 0, 0, 0, 0, 1.5, 0.25, 2.0, 0.6, 0, 0, 0, 0, 0, 0]
LBW17_OF = {"BASE": 0.3, "IN01": 0.7, "IN02": -0.4, "M00": 1.5, "OUT03": 0.25, "OUT04": 2.0, "OUT05": 0.6}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tiny_model_with_lora(tmp_path_factory.mktemp("tags"), rank=4, alpha=2.0, std=0.3, seed=3)
    (root / "loras" / "sub" / "deeper").mkdir(parents=True)
    (root / "a.safetensors").rename(root / "loras" / "sub" / "deeper" / "a.safetensors")
    return root


def _by_hand(path) -> dict[str, torch.Tensor]:
    """ΔW of every module of a kohya LoRA file: up·down·alpha/rank."""
    sd = load_file(str(path))
    out = {}
    for key in sd:
        if key.endswith(".lora_down.weight"):
            name = key[: -len(".lora_down.weight")]
            down, up = sd[key].float(), sd[f"{name}.lora_up.weight"].float()
            out[name] = (up.flatten(1) @ down.flatten(1)) * (float(sd[f"{name}.alpha"]) / down.shape[0])
    return out


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v.detach().clone() for part, m in (("unet", pipe.unet), ("te", pipe.text_encoder))
            for k, v in m.state_dict().items()}


def _layer(model, name: str):
    """The live layer a kohya name stands for."""
    return model.parts().index()[name].module


def _expected_block(name: str) -> str:
    if name.startswith("lora_te_"):
        return "BASE"
    return next(b for prefix, b in SD1_BLOCKS.items() if name.startswith(prefix))


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("tag", ["<lora:a:0.5:1.0>", f"<lora:a:0.5:1.0:lbw={','.join(map(str, LBW17))}>",
                                 "<lora:a:te=0.5:unet=1.0:lbw=OUTD>"])
def test_each_layer_gets_its_weight_times_its_delta(world, tag, merge):
    pipe = tiny_pipeline("sd1")
    model = BaseModel(pipe, "sd1", "epsilon", str(world / "model"), "diffusers")
    deltas = _by_hand(world / "loras" / "sub" / "deeper" / "a.safetensors")
    assert any(n.startswith("lora_te_") for n in deltas) and any(n.startswith("lora_unet_") for n in deltas)
    before = _weights(pipe)
    prompt, specs = split_prompt_loras(f"a dog {tag}", world / "loras")
    assert prompt == "a dog" and specs[0].path.name == "a.safetensors"
    blocks = None if "lbw" not in tag else LBW17_OF if "OUTD" not in tag else dict(zip(
        ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", "OUT03", "OUT04", "OUT05"],
        [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]))
    nets = attach_loras(model, specs, merge=merge)
    try:
        worst = 0.0
        for name, delta in deltas.items():
            w = 0.5 if name.startswith("lora_te_") else 1.0
            if blocks is not None:
                w *= blocks.get(_expected_block(name), 0.0)
            layer = _layer(model, name)
            if merge:
                got = layer.weight.detach().flatten(1) - before_of(before, pipe, layer).flatten(1)
            else:
                got = _applied(layer)
            worst = max(worst, float((got - w * delta).abs().max()))
        assert worst < 2e-6
    finally:
        detach_loras(nets)
    after = _weights(pipe)
    assert max(float((before[k] - after[k]).abs().max()) for k in before) < 1e-6  # unmerged: an ulp at most


def _applied(layer) -> torch.Tensor:
    """On the fly: the layer's output minus the base layer's on an identity batch, i.e. the ΔW it adds."""
    F = torch.nn.functional
    with torch.no_grad():
        if isinstance(layer, torch.nn.Conv2d):  # 1x1
            x = torch.eye(layer.in_channels).reshape(-1, layer.in_channels, 1, 1)
            return (layer(x) - F.conv2d(x, layer.weight, layer.bias)).flatten(1).T
        x = torch.eye(layer.in_features)
        return (layer(x) - F.linear(x, layer.weight, layer.bias)).T


def before_of(before, pipe, layer):
    for part, m in (("unet", pipe.unet), ("te", pipe.text_encoder)):
        for path, module in m.named_modules():
            if module is layer:
                return before[f"{part}.{path}.weight"]
    raise KeyError(layer)


def test_sdxl_blocks_follow_the_ldm_numbering():
    """The tiny SDXL UNet is named in SAI spelling: input_blocks.4 → IN04, output_blocks.2 → OUT02."""
    from lorakit.lora import LoRANetwork
    from lorakit.prompt_tags import module_scales, parse_tag

    from conftest import parts_of

    parts = parts_of(tiny_pipeline("sdxl"), "sdxl")
    net = LoRANetwork.create(parts, rank=2)
    weights = [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.1, 1.2, 1.3]  # BASE IN04 IN05 IN07 IN08 M00 OUT00..05
    scales = module_scales(parse_tag(f"<lora:x:2:3:lbw={','.join(map(str, weights))}>"), net, parts)
    ids = ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"]
    of = dict(zip(ids, weights))
    for name, s in scales.items():
        m = re.match(r"lora_unet_(input|output)_blocks_(\d+)_", name)
        if name.startswith("lora_te"):
            want = 2 * of["BASE"]
        elif name.startswith("lora_unet_middle_block_"):
            want = 3 * of["M00"]
        else:
            want = 3 * of[f"{'IN' if m[1] == 'input' else 'OUT'}{int(m[2]):02d}"]
        assert s == pytest.approx(want), name
    assert len(scales) == len(net.adapters) and {round(s, 6) for s in scales.values()} >= {1.8, 0.3, 0.6, 1.5}


def test_presets_are_the_extensions_17_weights():
    assert all(len(v.split(",")) == 17 for v in PRESETS.values())
    _, (tag,) = parse("<lora:x:lbw=INS>")
    assert tag.te == tag.unet == 1.0
    assert [tag.blocks[b] for b in ("BASE", "IN01", "IN02", "IN04", "IN05", "M00", "OUT03")] == [1, 1, 1, 1, 0, 0, 0]


def test_a1111_weight_defaults():
    """unet defaults to te (A1111's extra_networks_lora.activate); named te=/unet= override positional,
    and unet follows the final te."""
    _, tags = parse("<lora:a> <lora:b:0.4> <lora:c:0.4:0.9> <lora:d:unet=0.2> <lora:e:0.4:te=0.1>")
    assert [(t.te, t.unet) for t in tags] == [(1, 1), (0.4, 0.4), (0.4, 0.9), (1, 0.2), (0.1, 0.1)]


def test_tag_weights_equal_a_file_scaled_by_hand(world, tmp_path):
    """End to end: `<lora:a:0.5:1.0>` draws the image of `--lora` with a file whose text-encoder
    lora_up tensors were halved by hand."""
    from safetensors.torch import save_file

    src = world / "loras" / "sub" / "deeper" / "a.safetensors"
    sd = load_file(str(src))
    scaled = {k: (v * 0.5 if k.startswith("lora_te_") and k.endswith("lora_up.weight") else v) for k, v in sd.items()}
    save_file(scaled, str(tmp_path / "half_te.safetensors"))
    common = ["generate", "--model", str(world / "model"), "--steps", "2", "--seed", "5", "--sampler", "ddim"]
    assert main([*common, "--prompt", "a dog <lora:a:0.5:1.0>", "--lora-dir", str(world / "loras"),
                 "--out", str(tmp_path / "tag.png")]) == 0
    assert main([*common, "--prompt", "a dog", "--lora", str(tmp_path / "half_te.safetensors"),
                 "--out", str(tmp_path / "file.png")]) == 0
    assert main([*common, "--prompt", "a dog <lora:a:1>", "--lora-dir", str(world / "loras"),
                 "--out", str(tmp_path / "full.png")]) == 0
    tag, file, full = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=np.float32) for n in ("tag", "file", "full"))
    assert np.abs(tag - file).max() <= 1 and np.abs(tag - full).max() > 1
    assert Image.open(tmp_path / "tag.png").text["parameters"].startswith("a dog <lora:a:0.5:1.0>")


def test_names_are_found_in_subfolders_and_ambiguity_is_refused(world, tmp_path):
    assert find_lora(world / "loras", "a") == world / "loras" / "sub" / "deeper" / "a.safetensors"
    assert find_lora(world / "loras", "sub/deeper/a") == world / "loras" / "sub" / "deeper" / "a.safetensors"
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    (tmp_path / "x" / "s.safetensors").write_bytes(b"")
    (tmp_path / "y" / "s.safetensors").write_bytes(b"")
    from lorakit.errors import LoraKitError

    with pytest.raises(LoraKitError, match="ambiguous"):
        find_lora(tmp_path, "s")


@pytest.mark.parametrize("tag,needle", [
    ("<lora:a:abc>", "<lora:a:abc>"),
    ("<lora:a:1:xyz>", "'xyz' is not a number"),
    ("<lora::1>", "no LoRA name"),
    ("<lora:a:1:2:3>", "at most two weights"),
    ("<lora:a:1:dyn=4>", "dyn= is not supported"),
    ("<lora:a:1:lbw=NOPE>", "unknown block weight preset 'NOPE'"),
    ("<lora:a:1:lbw=1,1,1>", "3 block weights"),
    ("<lora:a:1:lbw=1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>", "18 block weights"),
    ("<lora:a:1:lbw=1,1,1,1,1,1,1,1,1,1,1,R>", "'R' is not a number"),
    ("<lora:a:1", "not closed"),
    ("<lora:missing:1>", "no LoRA named 'missing'"),
])
def test_bad_tag_is_one_line_exit_2(world, tmp_path, capsys, tag, needle):
    code = main(["generate", "--model", str(world / "model"), "--prompt", f"a dog {tag}", "--lora-dir",
                 str(world / "loras"), "--steps", "1", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "x.png").exists()
