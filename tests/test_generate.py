"""`lorakit generate` and `lorakit merge --model`: images, PNG info, strengths, merged checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.cli import main
from lorakit.lora import LoRANetwork
from lorakit.models.tiny import tiny_pipeline

from conftest import parts_of


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny SD1 diffusers folder, a tiny SDXL one, and a LoRA file for each."""
    from lorakit.formats import save_lora

    root = tmp_path_factory.mktemp("gen")
    out = {}
    for family in ("sd1", "sdxl"):
        pipe = tiny_pipeline(family)
        pipe.save_pretrained(root / family)
        net = LoRANetwork.create(parts_of(pipe, family), rank=4, alpha=2.0)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        save_lora(root / f"{family}_style.safetensors", net.kohya_modules(), {}, family=family, dtype=torch.float32)
        out[family] = (root / family, root / f"{family}_style.safetensors", net)
    out["root"] = root
    return out


def _gen(args, tmp_path, name="img.png"):
    out = tmp_path / name
    code = main(["generate", "--steps", "3", "--seed", "11", "--sampler", "ddim", "--out", str(out), *args])
    assert code == 0
    return out


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def test_png_info_in_a1111_layout(world, tmp_path):
    model, lora, _ = world["sd1"]
    out = _gen(["--model", str(model), "--prompt", "a red circle", "--negative", "blurry",
                "--lora", f"{lora}:0.8"], tmp_path)
    info = Image.open(out).text["parameters"]
    lines = info.split("\n")
    assert lines[0] == "a red circle <lora:sd1_style:0.8>"
    assert lines[1] == "Negative prompt: blurry"
    assert "Steps: 3, Sampler: DDIM, CFG scale: 7, Seed: 11, Size: 16x16" in lines[2]
    from lorakit.formats import file_hashes

    assert f'Lora hashes: "sd1_style: {file_hashes(lora)["sshs_model_hash"][:12]}"' in lines[2]


def test_strength_zero_equals_no_lora_and_lora_changes_image(world, tmp_path):
    model, lora, _ = world["sd1"]
    plain = _pixels(_gen(["--model", str(model), "--prompt", "a cat"], tmp_path, "a.png"))
    zero = _pixels(_gen(["--model", str(model), "--prompt", "a cat", "--lora", f"{lora}:0"], tmp_path, "b.png"))
    full = _pixels(_gen(["--model", str(model), "--prompt", "a cat", "--lora", f"{lora}:1"], tmp_path, "c.png"))
    assert np.abs(plain - zero).max() <= 1.0  # rounding to 8 bits only
    assert np.abs(plain - full).mean() > 2.0


def test_on_the_fly_equals_merged_and_prompt_tags_equal_flags(world, tmp_path):
    model, lora, _ = world["sd1"]
    merged = _pixels(_gen(["--model", str(model), "--prompt", "a dog", "--lora", f"{lora}:0.6"], tmp_path, "m.png"))
    fly = _pixels(_gen(["--model", str(model), "--prompt", "a dog", "--lora", f"{lora}:0.6", "--on-the-fly"],
                       tmp_path, "f.png"))
    tag = _pixels(_gen(["--model", str(model), "--prompt", "a dog <lora:sd1_style:0.6>", "--lora-dir",
                        str(lora.parent)], tmp_path, "t.png"))
    assert np.abs(merged - fly).max() <= 2.0
    assert np.abs(merged - tag).max() == 0


def test_on_the_fly_builds_the_merged_weight_in_bf16(world, tmp_path, monkeypatch):
    """Through `lorakit generate --dtype bf16`, every layer taking W + ΔW (forced): on the fly draws the
    merged image pixel for pixel, both ways building W + ΔW from the file's factors in fp32."""
    from lorakit.lora import live

    monkeypatch.setattr(live, "WEIGHT_SPACE_FACTOR", 0.0)
    model, lora, _ = world["sd1"]
    args = ["--model", str(model), "--prompt", "a dog", "--lora", f"{lora}:0.6", "--dtype", "bf16"]
    merged = _pixels(_gen(args, tmp_path, "m.png"))
    fly = _pixels(_gen(args + ["--on-the-fly"], tmp_path, "f.png"))
    plain = _pixels(_gen(args[:4] + ["--dtype", "bf16"], tmp_path, "p.png"))
    assert np.abs(merged - plain).mean() > 2.0  # the LoRA shows
    assert np.array_equal(merged, fly)


def test_grid_and_seeds_for_n_images(world, tmp_path):
    model, lora, _ = world["sdxl"]
    out = tmp_path / "set.png"
    assert main(["generate", "--model", str(model), "--prompt", "x", "--n", "3", "--steps", "2", "--seed", "5",
                 "--lora", str(lora), "--out", str(out)]) == 0
    seeds = [Image.open(tmp_path / f"set-{i}.png").text["parameters"].split("Seed: ")[1].split(",")[0]
             for i in range(3)]
    assert seeds == ["5", "6", "7"]
    grid = Image.open(tmp_path / "set-grid.png")
    assert grid.size == (32, 32)  # 2×2 cells of 16 px


@pytest.mark.parametrize("fmt", ["folder", "single"])
def test_merge_into_checkpoint_equals_base_plus_delta(world, tmp_path, fmt):
    from lorakit.models import load_model

    model, lora, net = world["sd1"]
    out = tmp_path / ("merged" if fmt == "folder" else "merged.safetensors")
    assert main(["merge", "--model", str(model), "--lora", f"{lora}:0.5", "--out", str(out), "--dtype", "fp32"]) == 0
    base = load_model(str(model))
    merged = load_model(str(out), config_dir=str(model)) if fmt == "single" else load_model(str(out))
    base_parts, merged_parts = base.parts().index(), merged.parts().index()
    worst = 0.0
    for name, adapter in net.adapters.items():
        expected = (base_parts[name].module.weight + 0.5 * adapter.delta_weight()).detach()
        got = merged_parts[name].module.weight.detach()
        worst = max(worst, float((got - expected).abs().max() / adapter.delta_weight().detach().abs().max()))
    assert worst <= 1e-5


@pytest.mark.parametrize("args,needle", [
    (["--model", "no/such/folder", "--prompt", "x"], "no/such/folder"),
    (["--prompt", "x", "--lora", "missing.safetensors"], "missing.safetensors"),
    (["--prompt", "x", "--width", "30"], "multiples of 8"),
    (["--prompt", "x", "--sampler", "warp9"], "unknown sampler"),
    (["--prompt", "x <lora:nothere:1>", "--lora-dir", "."], "nothere"),
    (["--prompt", "x", "--n", "0"], "--n"),
])
def test_bad_generate_input_is_one_line_exit_2(world, tmp_path, capsys, args, needle):
    model, _, _ = world["sd1"]
    if "--model" not in args:
        args = ["--model", str(model), *args]
    code = main(["generate", "--out", str(tmp_path / "x.png"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err


def test_lora_of_another_family_is_refused(world, tmp_path, capsys):
    model, _, _ = world["sd1"]
    _, xl_lora, _ = world["sdxl"]
    code = main(["generate", "--model", str(model), "--prompt", "x", "--lora", str(xl_lora),
                 "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "sdxl" in err.lower() and str(xl_lora) in err


@pytest.mark.parametrize("case,needle", [
    ("missing_model", "no/such/model"),
    ("missing_lora", "gone.safetensors"),
    ("rank_with_model", "--rank"),
    ("bad_dtype", "dtype"),
    ("checkpoint_as_lora", "unet"),
])
def test_bad_merge_input_is_one_line_exit_2(world, tmp_path, capsys, case, needle):
    model, lora, _ = world["sd1"]
    args = {
        "missing_model": ["--model", "no/such/model", "--lora", str(lora)],
        "missing_lora": ["--model", str(model), "--lora", str(tmp_path / "gone.safetensors")],
        "rank_with_model": ["--model", str(model), "--lora", str(lora), "--rank", "4"],
        "bad_dtype": ["--model", str(model), "--lora", str(lora), "--dtype", "fp12"],
        "checkpoint_as_lora": ["--model", str(model), "--lora",
                               str(model / "unet" / "diffusion_pytorch_model.safetensors")],
    }[case]
    code = main(["merge", *args, "--out", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "out.safetensors").exists()
