"""Every command against bad input: exit code 2, at most two lines on stderr naming the file and
the problem, no traceback (`--debug` shows one), and nothing half-written left behind. Images
with alpha, CMYK, 16 bits, palettes or an EXIF rotation are not bad input: they must work, and
the test looks at the pixels that reach the captioner and the trainer.

Cases run in-process through `lorakit.cli.main`; a few through the real entry point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lorakit.cli import main

from conftest import tiny_model_with_lora

GiB = 2**30


# --- files ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every input the cases need, built once: good ones and broken ones."""
    root = tmp_path_factory.mktemp("bad")
    tiny_model_with_lora(root, rank=4, alpha=2, seed=0)  # root/model (tiny SD1 folder), root/a.safetensors
    f = {"model": root / "model", "lora": root / "a.safetensors", "root": root}
    good = load_file(root / "a.safetensors")

    nan = dict(good)
    key = sorted(k for k in nan if k.endswith("lora_up.weight"))[0]
    nan[key] = nan[key].clone()
    nan[key].view(-1)[3] = float("nan")
    save_file(nan, str(root / "nan.safetensors"))
    f["nan_lora"], f["nan_module"] = root / "nan.safetensors", key.split(".")[0]

    d, u = torch.randn(4, 8), torch.randn(16, 4)
    save_file({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": d,
               "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": u,
               "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(4.0)},
              str(root / "xl.safetensors"))
    f["xl_lora"] = root / "xl.safetensors"

    torch.save(good, root / "a.ckpt")
    f["ckpt_lora"] = root / "a.ckpt"

    save_file({"encoder.layer.0.weight": torch.zeros(4, 4), "decoder.head.bias": torch.zeros(4)},
              str(root / "bert.safetensors"))
    f["not_sd"] = root / "bert.safetensors"

    blob = (root / "a.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    f["truncated"] = root / "truncated.safetensors"
    (root / "empty.safetensors").write_bytes(b"")
    f["empty"] = root / "empty.safetensors"
    (root / "text.safetensors").write_text("not tensors\n" * 5)
    f["text"] = root / "text.safetensors"

    poisoned = root / "nan_model"  # the tiny model with one NaN in its UNet
    shutil.copytree(f["model"], poisoned)
    weights = poisoned / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    bad = sorted(k for k in state if k.endswith("conv_in.weight"))[0]
    state[bad] = state[bad].clone()
    state[bad].view(-1)[0] = float("inf")
    save_file(state, str(weights))
    f["nan_model"], f["nan_weight"] = poisoned, bad

    pickled = root / "bin_model"  # the tiny model with its weights as pickles, as old diffusers saved them
    shutil.copytree(f["model"], pickled)
    for st in pickled.rglob("*.safetensors"):
        name = "diffusion_pytorch_model.bin" if st.name.startswith("diffusion_") else "pytorch_model.bin"
        torch.save(load_file(st), st.with_name(name))
        st.unlink()
    f["bin_model"] = pickled

    data = root / "data"
    data.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(data / "a.png")
    (data / "a.txt").write_text("a red square")
    f["data"] = data
    (root / "empty_dir").mkdir()
    f["empty_dir"] = root / "empty_dir"
    corrupt = root / "corrupt_data"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    f["corrupt_data"] = corrupt
    orphan = root / "orphan_data"
    shutil.copytree(data, orphan)
    (orphan / "b.txt").write_text("no image of this name")
    f["orphan_data"] = orphan
    (root / "prompts.txt").write_text("# only a comment\n\n")
    f["no_prompts"] = root / "prompts.txt"
    (root / "bad.toml").write_text("bogus_option = 3\n")
    f["bad_toml"] = root / "bad.toml"
    (root / "a_file").write_text("x")
    f["a_file"] = root / "a_file"
    return f


@pytest.fixture
def small_machine(monkeypatch):
    """16 GiB free, whatever this machine has: the size checks answer the same everywhere."""
    import lorakit.fit_check

    monkeypatch.setattr(lorakit.fit_check, "available_bytes", lambda device="cpu": 16 * GiB)


def _refused(capsys, argv, *needles, out: Path | None = None):
    """Exit 2, ≤ 2 lines, no traceback, the needles (file and problem) in the message, no output."""
    before = _listing(out.parent) if out is not None and out.parent.is_dir() else None
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    if out is not None:
        assert not out.exists(), f"{out} was written"
        if before is not None:
            assert _listing(out.parent) == before, "something was left in the output folder"
    return err


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _out(tmp_path, name):
    folder = tmp_path / "out"
    folder.mkdir(exist_ok=True)
    return folder / name


# --- caption ---------------------------------------------------------------------------------------

def test_caption_missing_folder(capsys, tmp_path):
    _refused(capsys, ["caption", tmp_path / "nope"], tmp_path / "nope", "not a folder")


def test_caption_empty_folder(capsys, files):
    _refused(capsys, ["caption", files["empty_dir"]], files["empty_dir"], "no images")


def test_caption_unreadable_image(capsys, files):
    _refused(capsys, ["caption", files["corrupt_data"]], files["corrupt_data"] / "a.png", "cannot read")
    assert not (files["corrupt_data"] / "a.txt").exists()


def test_caption_a_file_instead_of_a_folder(capsys, files):
    _refused(capsys, ["caption", files["a_file"]], files["a_file"], "not a folder")


# --- train -------------------------------------------------------------------------------------------

def _train(files, tmp_path, *extra, data=None):
    return ["train", "--model", files["model"], "--data", data or files["data"], "--out", tmp_path / "l.safetensors",
            "--steps", "1", "--resolution", "32", "--bucket-step", "8", "--no-progress", "--no-tensorboard", *extra]


def test_train_missing_data(capsys, files, tmp_path):
    _refused(capsys, _train(files, tmp_path, data=tmp_path / "nope"), tmp_path / "nope", "does not exist")


def test_train_empty_data(capsys, files, tmp_path):
    _refused(capsys, _train(files, tmp_path, data=files["empty_dir"]), files["empty_dir"], "no images")


def test_train_unreadable_image(capsys, files, tmp_path):
    _refused(capsys, _train(files, tmp_path, data=files["corrupt_data"]), files["corrupt_data"] / "a.png",
             "cannot read image")


def test_train_caption_without_image(capsys, files, tmp_path):
    _refused(capsys, _train(files, tmp_path, data=files["orphan_data"]), files["orphan_data"] / "b.txt",
             "no image of the same name")


def test_train_missing_model(capsys, files, tmp_path):
    argv = _train(files, tmp_path)
    argv[2] = tmp_path / "nope.safetensors"
    _refused(capsys, argv, tmp_path / "nope.safetensors", "no such file")


def test_train_model_that_is_a_lora(capsys, files, tmp_path):
    argv = _train(files, tmp_path)
    argv[2] = files["lora"]
    _refused(capsys, argv, files["lora"], "looks like a LoRA")


def test_train_model_that_is_not_stable_diffusion(capsys, files, tmp_path):
    argv = _train(files, tmp_path)
    argv[2] = files["not_sd"]
    _refused(capsys, argv, files["not_sd"], "not a Stable Diffusion checkpoint")


def test_train_pickled_model_needs_allow_pickle(capsys, files, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, ckpt)
    argv = _train(files, tmp_path)
    argv[2] = ckpt
    _refused(capsys, argv, ckpt, "--allow-pickle")


def test_train_config_file_missing(capsys, tmp_path):
    _refused(capsys, ["train", tmp_path / "none.toml"], tmp_path / "none.toml", "does not exist")


def test_train_unknown_option_in_config(capsys, files):
    _refused(capsys, ["train", files["bad_toml"]], files["bad_toml"], "unknown option 'bogus_option'")


def test_train_conflicting_options(capsys, files, tmp_path):
    _refused(capsys, _train(files, tmp_path, "--no-train-unet"), "nothing to train", "--train-text-encoder",
             out=tmp_path / "l.safetensors")


def test_train_batch_that_cannot_fit(capsys, files, tmp_path, small_machine):
    _refused(capsys, _train(files, tmp_path, "--batch-size", "100000000"), "training batch of 100000000",
             "needs at least", "--batch-size", out=tmp_path / "l.safetensors")


@pytest.fixture(scope="module")
def mmdit(files):
    """Tiny SD 3.x and Flux.1 folders, each with a LoRA of its own: {family: (model, lora)}."""
    from flux_support import tiny_flux_pipeline
    from sd3_support import tiny_sd3_pipeline

    from lorakit.formats import save_lora
    from lorakit.lora import LoRANetwork, ModelParts

    out = {}
    for family, make in (("sd3", tiny_sd3_pipeline), ("flux", tiny_flux_pipeline)):
        pipe = make()
        model, lora = files["root"] / family, files["root"] / f"{family}.safetensors"
        pipe.save_pretrained(model)
        net = LoRANetwork.create(ModelParts(family, pipe.transformer, [], dict(pipe.transformer.config)), rank=2)
        save_lora(lora, net.kohya_modules(), family=family, dtype=torch.float32)
        out[family] = (model, lora)
    return out


def _on(argv, model, lora=None):
    argv = list(argv)
    argv[argv.index("--model") + 1] = model
    if lora is not None:
        argv[argv.index("--lora") + 1] = lora
    return argv


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_train_batch_that_cannot_fit_sd3_flux(capsys, files, mmdit, tmp_path, small_machine, family):
    _refused(capsys, _on(_train(files, tmp_path, "--batch-size", "100000000"), mmdit[family][0]),
             "training batch of 100000000", "needs at least", "--batch-size", out=tmp_path / "l.safetensors")


@pytest.mark.parametrize("family, checkpointing", [("sd3", False), ("flux", False), ("flux", True)])
def test_train_batch_refused_exactly_beyond_its_lower_bound(capsys, files, mmdit, tmp_path, monkeypatch, family,
                                                            checkpointing):
    """The bound by hand, from the tiny transformer's config: a batch of 3 at 32 px (VAE ÷2: 16×16 latents,
    2×2 latent pixels a token: 64 tokens), width heads × head dim, every block, 12 values per token, channel
    and block (1 with gradient checkpointing), fp32. One byte less free memory is refused; that much trains."""
    import json

    import lorakit.fit_check

    cfg = json.loads((mmdit[family][0] / "transformer" / "config.json").read_text())
    blocks = cfg["num_layers"] + cfg.get("num_single_layers", 0)
    per = 1 if checkpointing else 12
    need = 3 * 64 * cfg["num_attention_heads"] * cfg["attention_head_dim"] * blocks * per * 4
    free = {"bytes": need - 1}
    monkeypatch.setattr(lorakit.fit_check, "available_bytes", lambda device="cpu": free["bytes"])
    argv = _on(_train(files, tmp_path, "--batch-size", "3", *(["--gradient-checkpointing"] if checkpointing else [])),
               mmdit[family][0])
    _refused(capsys, argv, "training batch of 3 at 32 px needs at least", out=tmp_path / "l.safetensors")
    free["bytes"] = need
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err


# --- generate ----------------------------------------------------------------------------------------

def _generate(files, out, *extra):
    return ["generate", "--model", files["model"], "--prompt", "x", "--steps", "1", "--out", out, *extra]


def test_generate_missing_model(capsys, tmp_path):
    out = _out(tmp_path, "x.png")
    _refused(capsys, ["generate", "--model", tmp_path / "nope", "--prompt", "x", "--out", out],
             tmp_path / "nope", "no such file", out=out)


def test_generate_missing_lora(capsys, files, tmp_path):
    out = _out(tmp_path, "x.png")
    _refused(capsys, _generate(files, out, "--lora", tmp_path / "gone.safetensors"), tmp_path / "gone.safetensors",
             "not found", out=out)


def test_generate_lora_for_another_family(capsys, files, tmp_path):
    out = _out(tmp_path, "x.png")
    _refused(capsys, _generate(files, out, "--lora", files["xl_lora"]), files["xl_lora"], "for SDXL", "SD1",
             out=out)


def test_generate_lora_with_nan(capsys, files, tmp_path):
    out = _out(tmp_path, "x.png")
    _refused(capsys, _generate(files, out, "--lora", files["nan_lora"]), files["nan_lora"], files["nan_module"],
             "NaN", out=out)


def test_generate_pickled_lora_refused(capsys, files, tmp_path):
    out = _out(tmp_path, "x.png")
    _refused(capsys, _generate(files, out, "--lora", files["ckpt_lora"]), files["ckpt_lora"], "--allow-pickle",
             out=out)


def test_generate_diffusers_folder_of_pickles_only_with_allow_pickle(capsys, files, tmp_path):
    out = _out(tmp_path, "x.png")
    argv = _generate(files, out)
    argv[argv.index("--model") + 1] = files["bin_model"]
    _refused(capsys, argv, files["bin_model"], ".bin", "--allow-pickle", out=out)
    assert main([str(a) for a in argv] + ["--allow-pickle"]) == 0
    assert out.is_file()


@pytest.mark.parametrize("command", ["generate", "merge", "convert", "inspect", "resize", "extract", "evaluate",
                                     "train", "ui"])
def test_every_command_that_reads_weights_takes_allow_pickle(capsys, command):
    assert main([command, "--help"]) == 0
    assert "--allow-pickle" in capsys.readouterr().out


def test_generate_absurd_width(capsys, files, tmp_path):
    out = _out(tmp_path, "x.png")
    _refused(capsys, _generate(files, out, "--width", "100000", "--height", "100000"), "100000x100000",
             "needs at least", out=out)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_generate_absurd_width_sd3_flux(capsys, files, mmdit, tmp_path, family):
    out = _out(tmp_path, "x.png")
    _refused(capsys, _on(_generate(files, out, "--width", "100000", "--height", "100000"), mmdit[family][0]),
             "100000x100000", "needs at least", out=out)


def test_generate_grid_that_cannot_fit(capsys, files, tmp_path, small_machine):
    out = _out(tmp_path, "x.png")
    _refused(capsys, _generate(files, out, "--n", "100000", "--width", "512", "--height", "512"),
             "100000 image(s)", "needs at least", out=out)


def test_generate_size_not_a_multiple_of_8(capsys, files, tmp_path):
    out = _out(tmp_path, "x.png")
    _refused(capsys, _generate(files, out, "--width", "100"), "multiples of 8", out=out)


def test_generate_unknown_sampler(capsys, files, tmp_path):
    out = _out(tmp_path, "x.png")
    _refused(capsys, _generate(files, out, "--sampler", "bogus"), "unknown sampler 'bogus'", out=out)


def test_generate_prompt_lora_tag_without_lora_dir(capsys, files, tmp_path):
    out = _out(tmp_path, "x.png")
    argv = _generate(files, out)
    argv[argv.index("--prompt") + 1] = "a dog <lora:dog:0.5>"
    _refused(capsys, argv, "<lora:dog:0.5>", "--lora-dir", out=out)


def test_generate_output_under_a_file(capsys, files, tmp_path):
    out = files["a_file"] / "x.png"
    _refused(capsys, _generate(files, out), files["a_file"])
    assert files["a_file"].read_text() == "x"


# --- merge -------------------------------------------------------------------------------------------

def test_merge_nan_lora_into_a_checkpoint(capsys, files, tmp_path):
    out = _out(tmp_path, "m.safetensors")
    _refused(capsys, ["merge", "--model", files["model"], "--lora", files["nan_lora"], "--out", out],
             files["nan_lora"], files["nan_module"], "NaN", out=out)


def test_merge_into_a_checkpoint_with_nan(capsys, files, tmp_path):
    out = _out(tmp_path, "m.safetensors")
    _refused(capsys, ["merge", "--model", files["nan_model"], "--lora", files["lora"], "--out", out],
             files["nan_model"], files["nan_weight"], "NaN/Inf", out=out)


def test_merge_nan_loras_together(capsys, files, tmp_path):
    out = _out(tmp_path, "ab.safetensors")
    _refused(capsys, ["merge", "--lora", files["lora"], "--lora", files["nan_lora"], "--out", out],
             files["nan_lora"], "NaN", out=out)


def test_merge_loras_of_two_families(capsys, files, tmp_path):
    out = _out(tmp_path, "ab.safetensors")
    _refused(capsys, ["merge", "--lora", files["lora"], "--lora", files["xl_lora"], "--out", out],
             "different model families", out=out)


def test_merge_rank_with_a_checkpoint_conflicts(capsys, files, tmp_path):
    out = _out(tmp_path, "m.safetensors")
    _refused(capsys, ["merge", "--model", files["model"], "--lora", files["lora"], "--rank", "2", "--out", out],
             "--rank applies to LoRA+LoRA", out=out)


def test_merge_rank_zero(capsys, files, tmp_path):
    out = _out(tmp_path, "ab.safetensors")
    _refused(capsys, ["merge", "--lora", files["lora"], "--rank", "0", "--out", out], "at least 1", out=out)


def test_merge_into_something_that_is_not_stable_diffusion(capsys, files, tmp_path):
    out = _out(tmp_path, "m.safetensors")
    _refused(capsys, ["merge", "--model", files["not_sd"], "--lora", files["lora"], "--out", out],
             files["not_sd"], "not a Stable Diffusion checkpoint", out=out)


def test_merge_pickled_lora_refused_then_allowed(capsys, files, tmp_path):
    out = _out(tmp_path, "ab.safetensors")
    _refused(capsys, ["merge", "--lora", files["ckpt_lora"], "--out", out], files["ckpt_lora"], "--allow-pickle",
             out=out)
    assert main(["merge", "--lora", str(files["ckpt_lora"]), "--out", str(out), "--allow-pickle"]) == 0
    assert out.is_file()


# --- convert, inspect ----------------------------------------------------------------------------------

def test_convert_missing_file(capsys, tmp_path):
    out = _out(tmp_path, "c.safetensors")
    _refused(capsys, ["convert", tmp_path / "nope.safetensors", "--to", "diffusers", "--out", out],
             tmp_path / "nope.safetensors", "no such file", out=out)


def test_convert_unknown_format(capsys, files, tmp_path):
    out = _out(tmp_path, "c.safetensors")
    _refused(capsys, ["convert", files["lora"], "--to", "ckpt", "--out", out], "--to 'ckpt'", out=out)


def test_convert_truncated_file(capsys, files, tmp_path):
    out = _out(tmp_path, "c.safetensors")
    _refused(capsys, ["convert", files["truncated"], "--to", "diffusers", "--out", out], files["truncated"],
             "truncated", out=out)


def test_convert_onto_itself(capsys, files, tmp_path):
    copy = tmp_path / "a.safetensors"
    shutil.copy(files["lora"], copy)
    before = copy.read_bytes()
    _refused(capsys, ["convert", copy, "--to", "kohya", "--out", copy], "overwrite the input")
    assert copy.read_bytes() == before


def test_convert_nan_lora(capsys, files, tmp_path):
    out = _out(tmp_path, "c.safetensors")
    _refused(capsys, ["convert", files["nan_lora"], "--to", "diffusers", "--out", out], files["nan_lora"],
             files["nan_module"], out=out)


def test_convert_pickle_refused(capsys, files, tmp_path):
    out = _out(tmp_path, "c.safetensors")
    _refused(capsys, ["convert", files["ckpt_lora"], "--to", "kohya", "--out", out], files["ckpt_lora"],
             "--allow-pickle", out=out)


def test_inspect_empty_file(capsys, files):
    _refused(capsys, ["inspect", files["empty"]], files["empty"], "empty file")


def test_inspect_text_file(capsys, files):
    _refused(capsys, ["inspect", files["text"]], files["text"], "not a safetensors file")


def test_inspect_a_checkpoint(capsys, files):
    _refused(capsys, ["inspect", files["not_sd"]], files["not_sd"], "not a LoRA")


def test_inspect_nan_lora(capsys, files):
    _refused(capsys, ["inspect", files["nan_lora"]], files["nan_lora"], files["nan_module"], "NaN")


def test_inspect_pickle_only_with_allow_pickle(capsys, files):
    _refused(capsys, ["inspect", files["ckpt_lora"]], files["ckpt_lora"], "--allow-pickle")
    assert main(["inspect", str(files["ckpt_lora"]), "--json", "--allow-pickle"]) == 0
    assert '"modules"' in capsys.readouterr().out


# --- resize, extract -------------------------------------------------------------------------------------

def test_resize_to_a_higher_rank(capsys, files, tmp_path):
    out = _out(tmp_path, "r.safetensors")
    _refused(capsys, ["resize", files["lora"], "--rank", "999", "--out", out], files["lora"], "only lowers",
             out=out)


def test_resize_without_a_rank(capsys, files, tmp_path):
    out = _out(tmp_path, "r.safetensors")
    _refused(capsys, ["resize", files["lora"], "--out", out], "give --rank, --dynamic", out=out)


def test_resize_unknown_dynamic_method(capsys, files, tmp_path):
    out = _out(tmp_path, "r.safetensors")
    _refused(capsys, ["resize", files["lora"], "--dynamic", "bogus:1", "--out", out], "bogus", out=out)


def test_resize_nan_lora(capsys, files, tmp_path):
    out = _out(tmp_path, "r.safetensors")
    _refused(capsys, ["resize", files["nan_lora"], "--rank", "2", "--out", out], files["nan_lora"], "NaN", out=out)


def test_extract_missing_base(capsys, files, tmp_path):
    out = _out(tmp_path, "e.safetensors")
    _refused(capsys, ["extract", "--base", tmp_path / "nope", "--tuned", files["model"], "--rank", "2", "--out", out],
             tmp_path / "nope", out=out)


def test_extract_from_a_base_with_nan(capsys, files, tmp_path):
    out = _out(tmp_path, "e.safetensors")
    _refused(capsys, ["extract", "--base", files["nan_model"], "--tuned", files["model"], "--rank", "2",
                      "--out", out], files["nan_model"], files["nan_weight"], out=out)


def test_extract_tuned_is_not_stable_diffusion(capsys, files, tmp_path):
    out = _out(tmp_path, "e.safetensors")
    _refused(capsys, ["extract", "--base", files["model"], "--tuned", files["not_sd"], "--rank", "2", "--out", out],
             files["not_sd"], out=out)


# --- evaluate ------------------------------------------------------------------------------------------------

def _evaluate(files, *extra):
    return ["evaluate", "--model", files["model"], "--lora", files["lora"], "--prompt", "x", "--steps", "1", *extra]


def test_evaluate_missing_lora(capsys, files, tmp_path):
    argv = _evaluate(files)
    argv[argv.index("--lora") + 1] = tmp_path / "gone.safetensors"
    _refused(capsys, argv, tmp_path / "gone.safetensors", "not found")


def test_evaluate_strengths_not_numbers(capsys, files):
    _refused(capsys, _evaluate(files, "--strengths", "half,full"), "--strengths", "'half,full'")


def test_evaluate_prompt_file_without_prompts(capsys, files):
    argv = _evaluate(files, "--prompts", files["no_prompts"])
    del argv[argv.index("--prompt"):argv.index("--prompt") + 2]
    _refused(capsys, argv, files["no_prompts"], "no prompts")


def test_evaluate_sweep_that_cannot_fit(capsys, files, tmp_path, small_machine):
    out = _out(tmp_path, "sweep.png")
    _refused(capsys, _evaluate(files, "--n", "20000", "--width", "512", "--height", "512", "--out", out),
             "needs at least", out=out)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_evaluate_sweep_that_cannot_fit_sd3_flux(capsys, files, mmdit, tmp_path, small_machine, family):
    out = _out(tmp_path, "sweep.png")
    _refused(capsys, _on(_evaluate(files, "--n", "20000", "--width", "512", "--height", "512", "--out", out),
                         *mmdit[family]), "needs at least", out=out)


# --- the web UI's actions (the same checks; gradio shows the one line) -------------------------------------

def _ui_refuses(fn, *args, needles=()):
    from lorakit.errors import LoraKitError

    with pytest.raises(LoraKitError) as err:
        fn(*args)
    text = str(err.value)
    assert "\n" not in text
    for needle in needles:
        assert str(needle) in text, (needle, text)


def test_ui_inspect_missing_file(tmp_path):
    from lorakit.ui import actions

    _ui_refuses(actions.inspect_file, str(tmp_path / "gone.safetensors"), needles=["gone.safetensors", "not found"])


def test_ui_convert_nan_lora(files, tmp_path):
    from lorakit.ui import actions

    out = tmp_path / "c.safetensors"
    _ui_refuses(actions.convert_file, str(files["nan_lora"]), "diffusers", str(out), needles=[files["nan_module"]])
    assert not out.exists()


def test_ui_merge_pickle_refused_unless_the_server_allows(files, tmp_path):
    from lorakit.ui import actions

    out = tmp_path / "m.safetensors"
    _ui_refuses(actions.merge_files, str(files["ckpt_lora"]), 0, "", str(out), needles=["--allow-pickle"])
    assert not out.exists()
    actions.set_allow_pickle(True)
    try:
        assert actions.merge_files(str(files["ckpt_lora"]), 0, "", str(out)).startswith("wrote")
    finally:
        actions.set_allow_pickle(False)
    assert out.is_file()


def test_ui_generate_absurd_size(files):
    from lorakit.ui import actions

    _ui_refuses(actions.generate_images, str(files["model"]), "x", "", "", 1, 1, 7.0, 0, 100000, 100000, "euler_a",
                "", "", needles=["100000x100000", "needs at least"])


def test_ui_caption_missing_folder(tmp_path):
    from lorakit.ui import actions

    _ui_refuses(actions.caption_dir, str(tmp_path / "nope"), "", False, "x", needles=["nope", "not a folder"])


# --- --debug, the real entry point, read-only folders ------------------------------------------------------

def test_debug_shows_the_traceback(capsys, files):
    assert main(["--debug", "inspect", str(files["empty"])]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "LoraKitError" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_debug_lets_library_warnings_through(monkeypatch):
    import warnings

    from lorakit import cli

    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    for argv, shown in ((["--debug", "generate"], ["from diffusers"]), (["generate", "--debug"], [])):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("default")
            cli._silence_library_warnings(argv)  # only the global option (before the command) counts
            warnings.warn_explicit("from diffusers", FutureWarning, "x.py", 1, module="diffusers.utils")
        assert [str(w.message) for w in seen] == shown


def test_the_installed_command_answers_in_one_line(files):
    run = subprocess.run([sys.executable, "-m", "lorakit", "merge", "--lora", str(files["nan_lora"]), "--out",
                          str(files["root"] / "never.safetensors")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "NaN" in lines[0] and str(files["nan_lora"]) in lines[0], run.stderr
    assert not (files["root"] / "never.safetensors").exists()


@pytest.fixture
def readonly_dir():
    """A folder the lorakit process cannot write to. As root (who ignores modes) the command is run as
    `nobody` through setpriv, so the folder and inputs live in a world-readable temporary folder."""
    base = Path(tempfile.mkdtemp(prefix="lorakit-ro-"))
    os.chmod(base, 0o755)
    ro = base / "readonly"
    ro.mkdir()
    yield base, ro
    os.chmod(ro, 0o755)
    shutil.rmtree(base, ignore_errors=True)


def _run_unprivileged(argv, base):
    env = {**os.environ, "HOME": str(base), "LORAKIT_CACHE": str(base / "cache"),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    prefix = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run(prefix + [sys.executable, "-m", "lorakit", *map(str, argv)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=base)


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv")
@pytest.mark.parametrize("command", ["convert", "caption"])
def test_read_only_output_folder(files, readonly_dir, command):
    base, ro = readonly_dir
    if command == "convert":
        src = base / "a.safetensors"
        shutil.copy(files["lora"], src)
        os.chmod(src, 0o644)
        argv, target = ["convert", src, "--to", "diffusers", "--out", ro / "c.safetensors"], ro
    else:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(ro / "img.png")
        argv, target = ["caption", ro, "--model", base / "no-blip-needed"], ro
    os.chmod(ro, 0o555)
    run = _run_unprivileged(argv, base)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in run.stderr, run.stderr
    assert str(target) in run.stderr, run.stderr
    assert sorted(p.name for p in ro.iterdir()) == (["img.png"] if command == "caption" else [])


# --- images that are odd but fine: they must work, upright and in the right colours -------------------------

def _odd_images(folder: Path) -> dict[str, tuple]:
    """name → the RGB colour at the top-right and the bottom-left of the upright picture."""
    folder.mkdir(parents=True, exist_ok=True)
    red, blue, white = (255, 0, 0), (0, 0, 255), (255, 255, 255)
    # stored 48 wide × 32 high, left half red, right half blue; EXIF 6 = turn 90° clockwise to view,
    # so upright it is 32 × 48 with red on top and blue at the bottom
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[:, :24] = red
    arr[:, 24:] = blue
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(folder / "rotated.jpg", exif=exif, quality=95)
    rgba = np.zeros((32, 32, 4), np.uint8)  # left half transparent (on white), right half opaque blue
    rgba[:, 16:] = (0, 0, 255, 255)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)  # CMYK red
    g16 = np.full((32, 32), 65535, np.uint16)
    g16[16:] = 0  # top white, bottom black in 16 bits: PIL's own conversion turns it all white
    Image.fromarray(g16).save(folder / "gray16.png")
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    pal.paste(1, (0, 16, 32, 32))
    pal.save(folder / "palette.png")
    for name in ("rotated", "alpha", "cmyk", "gray16", "palette"):
        (folder / f"{name}.txt").write_text(f"a {name} picture")
    return {"rotated": (red, blue), "alpha": (blue, white), "cmyk": (red, red), "gray16": (white, (0, 0, 0)),
            "palette": (blue, (0, 255, 0))}


def _corners(arr: np.ndarray) -> tuple:
    """Mean colour of the top-right and bottom-left 4×4 corners of an HxWx3 0..255 array (a picture
    left unrotated, or mirrored, swaps them)."""
    return tuple(arr[:4, -4:].reshape(-1, 3).mean(0)), tuple(arr[-4:, :4].reshape(-1, 3).mean(0))


def _close(got, want, tol=40):
    return all(abs(g - w) <= tol for g, w in zip(got, want))


def test_odd_images_reach_the_captioner_upright_and_in_colour(tmp_path, monkeypatch):
    import lorakit.caption as caption
    from lorakit.data import folders

    expected = _odd_images(tmp_path / "pics")
    for p in (tmp_path / "pics").glob("*.txt"):
        p.unlink()
    seen = {}
    real = folders.load_rgb

    def spy(path):
        im = real(path)
        seen[Path(path).stem] = (im.size, np.asarray(im))
        return im

    monkeypatch.setattr(folders, "load_rgb", spy)
    monkeypatch.setattr(caption, "load_captioner", lambda model, device="cpu": (None, None))
    monkeypatch.setattr(caption, "caption_images", lambda images, *a, **k: ["a caption"] * len(list(images)))
    assert main(["caption", str(tmp_path / "pics")]) == 0
    assert sorted(p.stem for p in (tmp_path / "pics").glob("*.txt")) == sorted(expected)
    assert seen["rotated"][0] == (32, 48)  # upright: 32 wide, 48 high
    for name, (top, bottom) in expected.items():
        tr, bl = _corners(seen[name][1])
        assert _close(tr, top) and _close(bl, bottom), (name, tr, bl)


def test_odd_images_reach_the_trainer_upright_and_in_colour(tmp_path, monkeypatch, files):
    import lorakit.train.loop as loop

    expected = _odd_images(tmp_path / "pics")
    batches = []
    real = loop.encode_pixels

    def spy(vae, pixels, family=None):
        batches.append(pixels.detach().cpu().clone())
        return real(vae, pixels, family)

    monkeypatch.setattr(loop, "encode_pixels", spy)
    code = main(["train", "--model", str(files["model"]), "--data", str(tmp_path / "pics"), "--out",
                 str(tmp_path / "l.safetensors"), "--steps", "1", "--resolution", "32", "--bucket-step", "8",
                 "--no-bucket", "--no-progress", "--no-tensorboard", "--rank", "2", "--save-dtype", "fp32"])
    assert code == 0 and (tmp_path / "l.safetensors").is_file()
    # one encode per image (plain; no flips): centre-cropped squares in [-1, 1]
    assert len(batches) == len(expected)
    got = [_corners(((b[0].permute(1, 2, 0).numpy() + 1) * 127.5)) for b in batches]
    for name, (top, bottom) in expected.items():  # the rotated one: its centre square, red on top
        assert any(_close(tr, top) and _close(bl, bottom) for tr, bl in got), (name, got)
    assert not any(_close(tr, (0, 0, 255)) and _close(bl, (255, 0, 0)) for tr, bl in got)  # never left lying
