"""Training health: a NaN/Inf loss stops the run naming the step and the last good checkpoint, or
is skipped and counted (--nan-policy skip); the automatic bucket step always fits the model's own
size multiple; a PEFT adapter is never written under a file name."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from lorakit.cli import main as cli
from lorakit.models.single_file import CONFIGS_DIR
from lorakit.train import losses
from lorakit.train.loop import Trainer
from train_support import config, make_images, one_thread, tiny_model_dir

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("health")


@pytest.fixture(scope="module")
def sd1(root):
    return tiny_model_dir(root, "sd1")


@pytest.fixture(scope="module")
def images(root):
    return make_images(root / "images")


def _metadata(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


@pytest.fixture
def nan_at(monkeypatch):
    """Make the loss of the given optimizer steps (1-based, one micro-step each) NaN."""
    bad: set[int] = set()
    calls = {"n": 0}
    loss = losses.denoising_loss

    def patched(*args, **kwargs):
        calls["n"] += 1
        value = loss(*args, **kwargs)
        return value * float("nan") if calls["n"] in bad else value

    monkeypatch.setattr(losses, "denoising_loss", patched)
    return bad.update


def _args(model, data, out, *extra):
    return ["train", "--model", model, "--data", data, "--out", out, "--resolution", 32, "--bucket-step", 8,
            "--rank", 4, "--steps", 6, "--save-every", 2, "--save-dtype", "fp32", "--no-progress",
            "--no-tensorboard", *extra]


def test_nan_loss_stops_at_once_naming_the_step_and_the_last_good_checkpoint(sd1, images, tmp_path, nan_at,
                                                                             capsys):
    nan_at({3})
    out = tmp_path / "lora.safetensors"
    run_dir = tmp_path / "lora-run"
    assert cli([str(a) for a in _args(sd1, images, out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("precision: fp32 ("), lines  # said when training started
    err = lines[1]
    assert err == (f"error: the loss became nan at step 3; stopped: the last good checkpoint is "
                   f"{run_dir / 'state-000002'} (LoRA {run_dir / 'lora-000002.safetensors'}): continue from it "
                   f"with --resume {run_dir} and a lower --lr, or use --nan-policy skip to skip such steps")
    assert sorted(p.name for p in run_dir.glob("state-*")) == ["state-000002"]  # nothing after the NaN saved
    assert not out.exists()


def test_nan_policy_skip_skips_and_counts_the_steps(sd1, images, tmp_path, nan_at, capsys):
    nan_at({3, 5})
    cfg = config(sd1, images, tmp_path, steps=6, nan_policy="skip", lr=1e-2)
    snapshots = []
    trainer = Trainer(cfg, on_step=lambda step, loss: snapshots.append(
        {k: v.clone() for k, v in trainer._unwrapped_network().kohya_state_dict().items()}))
    result = trainer.run()
    err = capsys.readouterr().err
    assert "step 3: the loss is nan, step skipped (1 skipped so far)" in err
    assert "step 5: the loss is nan, step skipped (2 skipped so far)" in err
    md = _metadata(result.out)
    assert md["ss_lorakit_nan_policy"] == "skip"
    assert md["ss_lorakit_skipped_steps"] == "2" and json.loads(md["ss_lorakit_skipped_at"]) == [3, 5]
    assert result.losses and all(math.isfinite(v) for v in result.losses) and len(result.losses) == 4
    for skipped in (3, 5):  # a skipped step leaves every weight as the step before left it
        before, after = snapshots[skipped - 2], snapshots[skipped - 1]
        assert all(torch.equal(before[k], after[k]) for k in before)
    moved = snapshots[3]  # step 4 trained again
    assert any(not torch.equal(snapshots[2][k], moved[k]) for k in moved)
    assert all(torch.isfinite(t).all() for t in result.network.kohya_state_dict().values())


def test_bad_nan_policy_is_refused(sd1, images, tmp_path, capsys):
    assert cli([str(a) for a in _args(sd1, images, tmp_path / "l.safetensors", "--nan-policy", "ignore")]) == 2
    assert "--nan-policy must be one of stop, skip" in capsys.readouterr().err


# --- the automatic bucket step ------------------------------------------------------------------
def _read(*parts) -> dict:
    return json.loads(Path(CONFIGS_DIR, *parts).read_text())


@pytest.mark.parametrize("folder, family, multiple", [("sd15", "sd1", 64), ("sd21", "sd2", 64),
                                                      ("sdxl-base", "sdxl", 32)])
def test_size_multiple_comes_from_the_model_configs(folder, family, multiple):
    from lorakit import families

    fake = SimpleNamespace(vae_config=_read(folder, "vae", "config.json"), spec=families.get(family),
                           model=SimpleNamespace(denoiser_config=_read(folder, "unet", "config.json")))
    assert Trainer._size_multiple(fake) == multiple


def _sd1_layout_pipeline():
    """SD 1.x's layout (4 UNet down blocks, a VAE that scales by 8: a 64 px multiple), tiny widths."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from lorakit.models.tiny import SCHEDULER, text_config
    from lorakit.models.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 8, 8, 8), norm_num_groups=4, cross_attention_dim=32,
                                attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * 4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=8, sample_size=64)
    return StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(text_config(32)), tokenizer=clip_tokenizer(),
                                   unet=unet, scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def test_resolution_64_on_an_sd1_layout_model_trains(root, tmp_path, capsys):
    model = root / "sd1-layout"
    if not model.exists():
        _sd1_layout_pipeline().save_pretrained(model)
    data = make_images(tmp_path / "data", sizes=((64, 64), (96, 64)))
    out = tmp_path / "lora.safetensors"
    base = ["train", "--model", model, "--data", data, "--rank", 2, "--steps", 1, "--no-progress",
            "--no-tensorboard"]
    code = cli([str(a) for a in [*base, "--resolution", 64, "--out", out]])
    assert code == 0, capsys.readouterr().err
    buckets = json.loads(_metadata(out)["ss_bucket_info"])["buckets"]  # {"WxH": count}
    sides = [int(side) for b in buckets for side in b.split("x")]
    assert sides and all(side % 64 == 0 for side in sides), buckets
    # a resolution the model cannot take is the user's choice: one line saying what it needs
    capsys.readouterr()
    assert cli([str(a) for a in [*base, "--resolution", 96, "--out", tmp_path / "b.safetensors"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --resolution 96 must be a multiple of 64 px, which this model's VAE and UNet "
                   "downsampling need")


# --- a PEFT adapter is a folder -------------------------------------------------------------------
def test_convert_to_peft_refuses_a_file_name(tmp_path, capsys):
    from lorakit.formats import save_lora
    from lorakit.formats.peft_fmt import is_adapter_folder

    src = tmp_path / "a.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_lora(src, {name: {"lora_down.weight": torch.randn(2, 320), "lora_up.weight": torch.randn(320, 2),
                           "alpha": torch.tensor(2.0)}}, family="sd1")
    out = tmp_path / "x.safetensors"
    assert cli(["convert", str(src), "--to", "peft", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(out) in err and "a PEFT adapter is a folder" in err and "x_peft/" in err
    assert not out.exists() and not list(tmp_path.glob(".x.safetensors*"))
    folder = tmp_path / "x_peft"
    assert cli(["convert", str(src), "--to", "peft", "--out", str(folder)]) == 0
    assert folder.is_dir() and is_adapter_folder(folder / "unet")
