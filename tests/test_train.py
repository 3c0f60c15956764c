"""`lorakit train` on tiny SD1 / SD2-v / SDXL models saved to folders: every option, the files it
writes, exact resume, and bad inputs stopping with one line while keeping what was written."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lorakit.cli import main as cli
from lorakit.errors import LoraKitError
from lorakit.train.config import TrainConfig
from lorakit.train.loop import run
from train_support import config, make_images, one_thread, tiny_model_dir

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def sd1(root):
    return tiny_model_dir(root, "sd1")


@pytest.fixture(scope="module")
def images(root):
    return make_images(root / "images")


def _metadata(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def _cli(args, capsys) -> tuple[int, str, str]:
    code = cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- the full-featured run, through the CLI and a TOML config ---------------------------------------
def test_cli_toml_and_options(root, sd1, tmp_path, capsys):
    photos = tmp_path / "photos"
    make_images(photos / "3_sks thing", sizes=((32, 32), (48, 32), (32, 48)), captions=False)
    for i in range(3):
        (photos / "3_sks thing" / f"img{i}.caption").write_text(f"sks thing, tag{i}, blue, small")
    make_images(photos / "1_other", sizes=((40, 40), (32, 32)), captions=True, seed=1)
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(f"""
[general]
shuffle_caption = true
keep_tokens = 1
[[datasets]]
batch_size = 2
  [[datasets.subsets]]
  image_dir = "{photos / '3_sks thing'}"
  num_repeats = 3
  caption_extension = ".caption"
  flip_aug = true
  [[datasets.subsets]]
  image_dir = "{photos / '1_other'}"
  caption_dropout_rate = 0.2
""")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# samples\nsks thing, blue\nsks thing on a table\n")
    out = tmp_path / "out" / "thing.safetensors"
    cfg_file = tmp_path / "train.toml"
    cfg_file.write_text(f"""
[model]
model = "{sd1}"
[data]
data = "{dataset}"
trigger = "sks"
resolution = 32
bucket_step = 8
min_bucket_side = 16
max_bucket_side = 64
cache_latents = "disk"
cache_text = "disk"
cache_dir = "{tmp_path / 'cache'}"
[network]
rank = 4
alpha = 2.0
preset = "full"
conv_rank = 2
conv_alpha = 1.0
train_text_encoder = false
init = "gaussian"
dropout = 0.1
rank_dropout = 0.1
module_dropout = 0.1
[optimizer]
optimizer = "lion"
lr = 3e-5
weight_decay = 0.05
scheduler = "cosine_with_restarts"
warmup_steps = 1
scheduler_cycles = 2
[loss]
min_snr_gamma = 5.0
noise_offset = 0.05
l1_penalty = 1e-6
l2_penalty = 1e-5
[run]
steps = 99
grad_accum = 2
seed = 3
[output]
save_every = 2
keep_states = 1
sample_every = 2
sample_steps = 2
sample_guidance = 3.0
sample_seed = 7
output_name = "thing-v1"
comment = "tiny test"
tensorboard = true
progress = true
""")
    code, stdout, err = _cli(["train", cfg_file, "--steps", 4, "--out", out], capsys)
    assert code == 0, err
    assert stdout.strip().endswith(str(out))
    # the bar's rate: tqdm's it/s (steps/s once a gradio app in the same process has wrapped tqdm)
    assert "train: 100%" in err and "loss=" in err and re.search(r"\d(it|steps)/s|s/(it|step)\b", err)
    run_dir = out.with_name("thing-run")
    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert {"loss.png", "lora-000002.safetensors", "config.toml", "samples/step-000002.png",
            "samples/step-000004.png"} <= files
    assert [p.name for p in run_dir.glob("state-*")] == ["state-000004"]  # keep_states = 1
    assert any("tfevents" in f for f in files)  # TensorBoard
    assert list((tmp_path / "cache" / "latents").rglob("*.safetensors"))  # disk caches
    assert list((tmp_path / "cache" / "text").rglob("*.safetensors"))  # filled as shuffled captions appear
    md = _metadata(out)
    keys = _keys(out)
    assert any("resnets_0_conv1.lora_down" in k for k in keys)  # preset full + conv rank
    assert md["ss_network_dim"] == "4" and md["ss_network_alpha"] == "2.0"
    assert json.loads(md["ss_network_args"])["conv_dim"] == "2"
    tags = json.loads(md["ss_tag_frequency"])
    assert tags["3_sks thing"]["sks thing"] == 3 and tags["3_sks thing"]["blue"] == 3
    assert tags["1_other"]["sks"] == 2  # trigger prepended where the caption lacks it
    assert md["ss_steps"] == "4" and md["ss_optimizer"] == "lion" and md["ss_lr_scheduler"] == "cosine_with_restarts"
    assert md["ss_gradient_accumulation_steps"] == "2" and md["ss_batch_size_per_device"] == "2"
    assert md["ss_min_snr_gamma"] == "5.0" and md["ss_noise_offset"] == "0.05" and md["ss_seed"] == "3"
    assert md["ss_shuffle_caption"] == "True" and md["ss_flip_aug"] == "True" and md["ss_keep_tokens"] == "1"
    assert md["ss_training_comment"] == "tiny test" and md["ss_base_model_version"] == "sd_v1"
    assert md["modelspec.architecture"] == "stable-diffusion-v1/lora" and md["sshs_model_hash"]
    assert json.loads(md["ss_dataset_dirs"])["3_sks thing"] == {"n_repeats": 3, "img_count": 3}
    written = tomllib.loads((run_dir / "config.toml").read_text())
    assert written["run"]["steps"] == 4 and written["network"]["preset"] == "full"


def test_print_config_is_a_valid_config(tmp_path, capsys):
    code, out, _ = _cli(["train", "--print-config", "--rank", 8, "--no-bucket", "--data", tmp_path], capsys)
    assert code == 0
    doc = tomllib.loads(out)
    assert doc["network"]["rank"] == 8 and doc["data"]["bucket"] is False
    f = tmp_path / "c.toml"
    f.write_text(out)
    assert TrainConfig.from_toml(f).rank == 8


def test_every_path_in_a_config_file_is_taken_from_its_folder(tmp_path):
    """Relative paths in a TOML are its neighbours, for each option typed as a path (text_encoders
    and config_dir were left to the working folder); a model option only when one is there."""
    from lorakit.train.config import PATH_OPTIONS

    (tmp_path / "clip").mkdir()
    f = tmp_path / "c.toml"
    f.write_text("\n".join(f'{name} = "rel-{name}"' for name in PATH_OPTIONS)
                 + '\nclip_model = "clip"\ndino_model = "facebook/dinov2-small"\n')
    cfg = TrainConfig.from_toml(f)
    assert {name: getattr(cfg, name) for name in PATH_OPTIONS} == {n: tmp_path / f"rel-{n}" for n in PATH_OPTIONS}
    assert (cfg.clip_model, cfg.dino_model) == (str(tmp_path / "clip"), "facebook/dinov2-small")


# --- families -------------------------------------------------------------------------------------------
def _lorakit_vs_diffusers(model_dir, lora_file, family):
    """The saved file loaded by diffusers gives the same UNet and text-encoder outputs as lorakit's network."""
    from diffusers import DiffusionPipeline

    from lorakit.formats import load_network
    from lorakit.models import load_model

    ours = load_model(str(model_dir))
    net = load_network(ours.parts(), lora_file)
    net.apply()
    theirs = DiffusionPipeline.from_pretrained(model_dir)
    theirs.load_lora_weights(str(lora_file))
    g = torch.Generator().manual_seed(0)
    cross = ours.unet.config.cross_attention_dim
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500])
    h = torch.randn(1, 77, cross, generator=g)
    kw = {}
    if family == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 32, generator=g),
                                   "time_ids": torch.tensor([[32., 32, 0, 0, 32, 32]])}
    with torch.no_grad():
        a = ours.unet(x, t, h, **kw).sample
        b = theirs.unet(x, t, h, **kw).sample
        base = DiffusionPipeline.from_pretrained(model_dir).unet(x, t, h, **kw).sample
        ids = torch.randint(0, 49000, (1, 77), generator=g)
        te_a, te_b = ours.pipe.text_encoder(ids)[0], theirs.text_encoder(ids)[0]
    delta = (a - base).abs().max()
    assert delta > 0
    assert (a - b).abs().max() <= 1e-4 * max(1.0, float(delta)) + 1e-5
    assert torch.allclose(te_a, te_b, atol=1e-4)


def test_text_encoder_lora_by_default_for_sd1_and_kept_on_resume(sd1, images, tmp_path):
    """SD 1.x/2.x/XL train a text-encoder LoRA unless told not to (kohya's default); a resumed run
    keeps what the run it continues resolved, and --no-train-text-encoder still stages the load."""
    cfg = config(sd1, images, tmp_path / "a", steps=2, save_every=1)
    assert cfg.train_text_encoder is None
    r = run(cfg)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in _keys(r.out))
    assert _metadata(r.out)["ss_network_train_unet_only"] == "False"
    assert "train_text_encoder = true" in (cfg.resolved_run_dir() / "config.toml").read_text()
    resumed = run(cfg.override({"resume": cfg.resolved_run_dir(), "steps": 3}))
    assert resumed.step == 3 and any(k.startswith("lora_te_") for k in _keys(resumed.out))
    off = run(config(sd1, images, tmp_path / "b", steps=1, train_text_encoder=False))
    assert not any(k.startswith("lora_te") for k in _keys(off.out))
    assert _metadata(off.out)["ss_network_train_unet_only"] == "True"


def test_sd2_v_prediction_text_encoder_bf16(root, images, tmp_path):
    model = tiny_model_dir(root, "sd2", "v_prediction")
    cfg = config(model, images, tmp_path, steps=3, train_text_encoder=True, lr=1.0,
                 optimizer="prodigy", mixed_precision="bf16", gradient_checkpointing=True, sdpa=False,
                 cache_latents="none", bucket=False, scheduler="polynomial", scheduler_power=2.0,
                 max_grad_norm=0.5, trigger="sks", batch_size=2)
    r = run(cfg)
    assert r.model.prediction_type == "v_prediction" and r.model.family == "sd2"
    assert all(torch.isfinite(torch.tensor(r.losses)))
    md = _metadata(r.out)
    assert md["ss_base_model_version"] == "sd_v2_v" and md["ss_v2"] == "True"
    assert md["ss_v_parameterization"] == "True" and md["ss_mixed_precision"] == "bf16"
    assert md["ss_text_encoder_lr"] == "1.0" and md["ss_network_train_unet_only"] == "False"
    keys = _keys(r.out)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert any(k.startswith("lora_unet_") for k in keys)
    trained_te = [p for p in r.network.parameters_by_part()["te"]]
    assert any(p.abs().sum() > 0 for p in trained_te if p.shape[0] > 4)  # up weights moved off zero
    _lorakit_vs_diffusers(model, r.out, "sd2")


def test_sdxl_two_text_encoders_fp16(root, images, tmp_path):
    model = tiny_model_dir(root, "sdxl")
    cfg = config(model, images, tmp_path, steps=2, train_text_encoder=True, mixed_precision="fp16",
                 save_dtype="fp32", trigger="sks", lr=1e-3, text_encoder_lr=5e-4)
    r = run(cfg)
    assert r.model.family == "sdxl"
    md = _metadata(r.out)
    assert md["ss_text_encoder_lr"] == "0.0005" and md["ss_unet_lr"] == "0.001"
    assert md["ss_base_model_version"] == "sdxl_base_v1-0"
    keys = _keys(r.out)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_") for k in keys)
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)  # SAI names for SDXL
    # LoRA weights are trained in fp32 whatever the base's dtype
    assert all(p.dtype == torch.float32 for p in r.network.parameters())
    _lorakit_vs_diffusers(model, r.out, "sdxl")


def test_sdxl_size_and_crop_conditioning(root, tmp_path):
    """add_time_ids carry each image's original size, crop and bucket (height first)."""
    from lorakit.train.loop import Trainer

    data = make_images(tmp_path / "d", sizes=((48, 32),))
    model = tiny_model_dir(root, "sdxl")
    t = Trainer(config(model, data, tmp_path, steps=1, flip=True))
    t.setup()
    seen = set()
    for micro in range(8):
        job, _, _ = t._job(t.data.batch(micro)[1], micro, 0)
        seen.add(tuple(job["time_ids"][0].tolist()))
    placement = t.data.placements[data / "img0.png"]
    (bw, bh), (rw, _) = placement.bucket, placement.resized
    top, left = placement.crop
    assert seen == {(32.0, 48.0, top, left, bh, bw), (32.0, 48.0, top, rw - bw - left, bh, bw)}


def test_text_encoder_only_plain_options(sd1, images, tmp_path):
    cfg = config(sd1, images, tmp_path, steps=2, train_unet=False, train_text_encoder=True, cache_latents="none",
                 device="cpu", repeats=3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0, cache_text="none",
                 run_dir=tmp_path / "rd", batch_size=1, scheduler="constant_with_warmup", warmup_steps=1)
    r = run(cfg)
    keys = _keys(r.out)
    assert keys and all(k.startswith("lora_te_") for k in keys)
    assert (tmp_path / "rd" / "state-000002").is_dir()
    assert _metadata(r.out)["ss_num_train_images"] == "12"  # 4 images × 3 repeats


# --- DreamBooth prior preservation ----------------------------------------------------------------------
def test_prior_preservation_generates_class_images(sd1, images, tmp_path):
    class_dir = tmp_path / "class"
    cfg = config(sd1, images, tmp_path, steps=2, trigger="sks", class_prompt="a square", class_data=class_dir,
                 num_class_images=3, class_steps=2, class_guidance=2.0, prior_weight=0.5)
    r = run(cfg)
    made = sorted(p.name for p in class_dir.glob("*.png"))
    assert made == ["class_00000.png", "class_00001.png", "class_00002.png"]
    md = _metadata(r.out)
    assert md["ss_num_reg_images"] == "3" and md["ss_prior_loss_weight"] == "0.5"
    assert json.loads(md["ss_reg_dataset_dirs"]) == {"reg_class": {"n_repeats": 1, "img_count": 3}}
    stamp = {p: p.stat().st_mtime_ns for p in class_dir.iterdir()}
    run(cfg.override({"out": tmp_path / "again.safetensors"}))  # enough images now: none regenerated
    assert {p: p.stat().st_mtime_ns for p in class_dir.iterdir()} == stamp


def test_prior_target_base_is_zero_until_the_lora_changes_the_base(sd1, images, tmp_path):
    """prior_target base: the prior term is the LoRA's change of the base's own prediction on the
    class images, so at step 1 (up = 0: the LoRA is the base) it adds nothing to the loss and
    nothing to the gradient; from step 2 it is positive. The image target is positive from step 1."""
    class_dir = tmp_path / "class"
    common = dict(steps=2, trigger="sks", class_prompt="a square", class_data=class_dir, num_class_images=4,
                  class_steps=2, class_guidance=2.0, lr=1e-2, batch_size=2)
    base = run(config(sd1, images, tmp_path / "base", prior_target="base", prior_weight=0.5, **common))
    off = run(config(sd1, images, tmp_path / "off", prior_target="base", prior_weight=0.0, **common))
    image = run(config(sd1, images, tmp_path / "image", prior_target="image", prior_weight=0.5, **common))
    assert base.losses[0] == off.losses[0]  # the same instance batch and noise; the prior term is exactly 0
    assert base.losses[1] > off.losses[1]  # the same weights after step 1; now the LoRA moves the base
    assert image.losses[0] > off.losses[0] + 1e-3
    assert _metadata(base.out)["ss_lorakit_prior_target"] == "base"


# --- exact resume ----------------------------------------------------------------------------------------
def test_resume_equals_uninterrupted(sd1, images, tmp_path):
    common = dict(steps=4, grad_accum=2, scheduler="cosine", warmup_steps=1, shuffle_caption=True, flip=True,
                  caption_dropout=0.2, dropout=0.1, noise_offset=0.1, trigger="sks", lr=1e-3, seed=11)
    full = run(config(sd1, images, tmp_path / "a", **common))

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    cfg = config(sd1, images, tmp_path / "b", **common)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_step=stop_at_2)
    run_dir = cfg.resolved_run_dir()
    assert (run_dir / "state-000002").is_dir() and not cfg.out.exists()
    resumed = run(cfg.override({"resume": run_dir}))
    assert resumed.losses == full.losses  # same batches, captions, noise: the curve is whole
    a, b = full.network.kohya_state_dict(), resumed.network.kohya_state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"

    with pytest.raises(LoraKitError, match=r"another config: rank 4 → 8") as e:
        run(cfg.override({"resume": run_dir, "rank": 8}))
    assert "\n" not in str(e.value)


# --- bad inputs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["empty", "orphan", "unreadable", "too_small", "adamw8bit", "bad_value",
                                  "bad_toml_key", "no_data", "resume_missing"])
def test_bad_inputs_one_line_exit_2(sd1, tmp_path, capsys, case):
    data = tmp_path / "data"
    data.mkdir()
    args = ["train", "--model", sd1, "--data", data, "--out", tmp_path / "o.safetensors", "--resolution", 32,
            "--bucket-step", 8, "--steps", 1, "--no-progress", "--no-tensorboard"]
    if case == "adamw8bit":
        try:
            import bitsandbytes  # noqa: F401
            pytest.skip("bitsandbytes is installed here: AdamW8bit is not a bad input")
        except ImportError:
            pass
    if case in ("adamw8bit", "bad_value", "resume_missing", "bad_toml_key"):
        make_images(data)
    if case == "orphan":
        make_images(data)
        (data / "lost.txt").write_text("no image")
    elif case == "unreadable":
        (data / "x.png").write_bytes(b"\x89PNG garbage")
    elif case == "too_small":
        make_images(data, sizes=((8, 8),))
    elif case == "adamw8bit":
        args += ["--optimizer", "adamw8bit"]
    elif case == "bad_value":
        args += ["--mixed-precision", "fp8"]
    elif case == "bad_toml_key":
        bad = tmp_path / "c.toml"
        bad.write_text("[network]\nrankk = 3\n")
        args.insert(1, bad)
    elif case == "no_data":
        args = ["train", "--model", sd1]
    elif case == "resume_missing":
        args += ["--resume", tmp_path / "nowhere"]
    code, _, err = _cli(args, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1, err
    expected = {"empty": "no images", "orphan": "no image of the same name", "unreadable": "cannot read image",
                "too_small": "too small", "adamw8bit": "bitsandbytes", "bad_value": "fp8",
                "bad_toml_key": "rankk", "no_data": "--data", "resume_missing": "does not exist"}[case]
    assert expected in lines[0]


def test_nan_loss_stops_and_keeps_what_was_written(sd1, images, tmp_path):
    cfg = config(sd1, images, tmp_path, steps=6, save_every=1, keep_states=5, lr=1e30, optimizer="lion",
                 max_grad_norm=0.0)
    with pytest.raises(LoraKitError, match="loss became") as e:
        run(cfg)
    assert "\n" not in str(e.value)
    run_dir = cfg.resolved_run_dir()
    states = sorted(p.name for p in run_dir.glob("state-*"))
    assert states and not cfg.out.exists()
    assert not list(run_dir.glob("*.tmp"))
    first = run_dir / "lora-000001.safetensors"
    assert first.is_file() and all(torch.isfinite(t).all() for t in _tensors(first).values())


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))
