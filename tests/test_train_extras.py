"""Training options a kohya user expects: --network-weights, --epochs / --save-every-epochs,
--clip-skip, Huber / smooth-L1 loss, per-family defaults, --model required, kohya's sample-prompt
options. Each against numbers worked out by hand or against a run that must equal it."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lorakit import families
from lorakit.cli import main as cli
from lorakit.errors import LoraKitError
from lorakit.train import losses
from lorakit.train.loop import Trainer, run
from lorakit.train.sample_prompts import parse_line, read_sample_prompts
from train_support import config, make_images, one_thread, tiny_model_dir

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("extras")


@pytest.fixture(scope="module")
def sd1(root):
    return tiny_model_dir(root, "sd1")


@pytest.fixture(scope="module")
def images(root):
    return make_images(root / "images")


def _cli(args, capsys) -> tuple[int, str, str]:
    code = cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _metadata(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# --- Huber / smooth L1 (sd-scripts' conditional_loss and get_huber_threshold_if_needed) ----------------
def _sd_alphas_cumprod() -> list[float]:
    """SD's scaled_linear schedule by hand: β_i = (√0.00085 + i/999·(√0.012 − √0.00085))², ᾱ = Π(1 − β)."""
    out, prod = [], 1.0
    for i in range(1000):
        beta = (math.sqrt(0.00085) + i / 999 * (math.sqrt(0.012) - math.sqrt(0.00085))) ** 2
        prod *= 1 - beta
        out.append(prod)
    return out


def test_huber_thresholds_are_sd_scripts_formulas():
    t = torch.tensor([0, 500, 999])
    const = losses.huber_threshold("constant", 0.1, 2.0, t)
    assert const.tolist() == pytest.approx([0.2, 0.2, 0.2])
    expo = losses.huber_threshold("exponential", 0.1, 1.0, t)
    # exp(ln(0.1)·t/1000): 1 at t=0, √0.1 = 0.316228 at t=500, 0.1^0.999 = 0.100230 at 999
    assert expo.tolist() == pytest.approx([1.0, 0.316228, 0.100230], abs=1e-6)
    ac = _sd_alphas_cumprod()
    snr = losses.huber_threshold("snr", 0.1, 1.0, t, alphas_cumprod=torch.tensor(ac, dtype=torch.float64))
    hand = [(1 - 0.1) / (1 + math.sqrt((1 - ac[i]) / ac[i])) ** 2 + 0.1 for i in (0, 500, 999)]
    assert snr.tolist() == pytest.approx(hand, rel=1e-6)
    # t=0: σ = √(0.00085/0.99915) = 0.029167, 0.9/1.029167² + 0.1 = 0.94971; near c where the noise dominates
    assert hand == pytest.approx([0.94971, 0.23128, 0.10369], abs=1e-5)


def test_huber_and_smooth_l1_losses_by_hand():
    pred = torch.tensor([[0.3, -0.01], [0.0, 2.0]]).view(2, 2, 1, 1)
    tgt = torch.zeros_like(pred)
    delta = torch.tensor([0.1, 0.5])  # one threshold per sample
    huber = losses.elementwise_loss(pred, tgt, "huber", delta).flatten().tolist()
    # 2δ(√(r² + δ²) − δ): r=0.3, δ=0.1 → 0.2·(√0.1 − 0.1) = 0.0432456;
    # r=0.01 → 0.2·(√0.0101 − 0.1) = 9.9751e-5 (≈ r²)
    # r=0, δ=0.5 → 0; r=2 → 1.0·(√4.25 − 0.5) = 1.5615528
    assert huber == pytest.approx([0.0432456, 9.9751e-5, 0.0, 1.5615528], rel=1e-4)
    smooth = losses.elementwise_loss(pred, tgt, "smooth_l1", delta).flatten().tolist()
    assert smooth == pytest.approx([0.432456, 9.9751e-4, 0.0, 3.1231056], rel=1e-4)  # 2(√(r² + δ²) − δ)
    loss = losses.denoising_loss(pred, tgt, torch.tensor([1.0, 0.5]), "huber", delta)
    assert loss.item() == pytest.approx(((0.0432456 + 9.9751e-5) / 2 + 0.5 * 1.5615528 / 2) / 2, rel=1e-5)
    assert losses.denoising_loss(pred, tgt).item() == pytest.approx((0.09 + 1e-4 + 0 + 4) / 4)  # l2 unchanged


def test_training_huber_loss_uses_the_snr_threshold_of_each_timestep(sd1, images, tmp_path):
    cfg = config(sd1, images, tmp_path, steps=1, loss_type="huber", huber_c=0.2, batch_size=2, bucket=False)
    trainer = Trainer(cfg)
    trainer.run()
    _, inst, _ = trainer.data.batch(0)
    job, tgt, weights = trainer._job(inst, 0, 0)
    with torch.no_grad():
        pred = trainer.denoiser([job])[0].float()
        got = trainer._loss(pred, job, tgt, weights).item()
    ac = _sd_alphas_cumprod()
    total = 0.0
    for k, t in enumerate(job["t"].tolist()):
        d = (1 - 0.2) / (1 + math.sqrt((1 - ac[t]) / ac[t])) ** 2 + 0.2
        r = pred[k] - tgt[k]
        total += (2 * d * (torch.sqrt(r * r + d * d) - d)).mean().item()
    assert got == pytest.approx(total / 2, rel=1e-4)
    assert got != pytest.approx(losses.denoising_loss(pred, tgt).item(), rel=1e-2)  # not the l2 loss


# --- --clip-skip (sd-scripts' SdTextEncodingStrategy: hidden_states[-N] through final_layer_norm) -------
def test_clip_skip_is_the_penultimate_layer_through_the_final_norm(sd1):
    from lorakit.models import load_model

    model = load_model(str(sd1), dtype=torch.float32)
    te, tok = model.pipe.text_encoder, model.pipe.tokenizer
    spec = families.get("sd1")
    ids = tok(["a red square"], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        skip2 = spec.encode_text([te], [tok], [ids], clip_skip=2)["hidden"]
        skip1 = spec.encode_text([te], [tok], [ids], clip_skip=1)["hidden"]
        plain = spec.encode_text([te], [tok], [ids])["hidden"]
        # by hand: the same CLIP without its last layer; its output goes through final_layer_norm
        short = copy.deepcopy(te)
        inner = getattr(short, "text_model", short)  # transformers 5 has no text_model level
        layers = inner.encoder.layers
        inner.encoder.layers = layers[:-1]
        hand = short(ids)[0]
        states = te(ids, output_hidden_states=True).hidden_states
        norm = getattr(te, "text_model", te).final_layer_norm
        by_formula = torch.nn.functional.layer_norm(states[-2], norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    assert len(layers) >= 2
    assert torch.allclose(skip2, hand, atol=1e-6) and torch.allclose(skip2, by_formula, atol=1e-6)
    assert torch.allclose(skip1, plain, atol=1e-6)  # N = 1: the last layer, as without the option
    assert (skip2 - plain).abs().max().item() > 1e-2  # another layer indeed


def test_train_conditions_on_the_clip_skip_layer(sd1, images, tmp_path):
    trainer = Trainer(config(sd1, images, tmp_path, steps=1, clip_skip=2, train_text_encoder=False,
                             cache_text="memory"))
    trainer.run()
    caption = trainer.data.instance[0].caption
    cached = trainer._text([caption])["hidden"]
    from lorakit.models import load_model

    te = load_model(str(sd1), dtype=torch.float32).pipe.text_encoder
    tok = trainer.model.pipe.tokenizer
    ids = tok([caption], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        inner = getattr(te, "text_model", te)
        inner.encoder.layers = inner.encoder.layers[:-1]
        assert torch.allclose(cached, te(ids)[0], atol=1e-5)


def test_clip_skip_asks_the_family():
    assert families.get("sd1").clip_skip == families.get("sd2").clip_skip == "honoured"
    assert families.get("sdxl").clip_skip == "ignored"  # sd-scripts: "SDXL training ignores clip_skip"
    assert families.get("sd3").clip_skip is None and families.get("flux").clip_skip is None


@pytest.fixture(scope="module")
def sd3(root):
    from sd3_support import tiny_sd3_pipeline

    tiny_sd3_pipeline().save_pretrained(root / "sd3")
    return root / "sd3"


@pytest.mark.parametrize("flags, says", [(["--clip-skip", "2"], "--clip-skip 2: SD3 models have no CLIP layer"),
                                         (["--loss-type", "huber"], "--huber-schedule snr needs a noise-prediction")])
def test_options_a_flow_matching_family_lacks_are_one_line(sd3, flags, says, tmp_path, capsys):
    data = make_images(tmp_path / "data", sizes=((32, 32),))
    capsys.readouterr()  # save_pretrained's progress bars
    code, _, err = _cli(["train", "--model", sd3, "--data", data, *flags, "--steps", "1", "--resolution", "32",
                         "--no-progress", "--no-tensorboard", "--out", tmp_path / "o.safetensors"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err


# --- per-family defaults ---------------------------------------------------------------------------
def test_family_defaults():
    d = {name: families.get(name).training_defaults(False, {}) for name in ("sd1", "sd2", "sdxl", "sd3")}
    assert d["sd1"] == {"resolution": 512, "sample_steps": 20, "sample_guidance": 7.5}
    assert d["sd2"]["resolution"] == 512 and families.get("sd2").training_defaults(True, {})["resolution"] == 768
    assert d["sdxl"]["resolution"] == 1024 and d["sd3"] == {"resolution": 1024, "sample_steps": 28,
                                                            "sample_guidance": 5.0}
    flux = families.get("flux")
    assert flux.training_defaults(False, {"guidance_embeds": True}) == {"resolution": 1024, "sample_steps": 28,
                                                                        "sample_guidance": 3.5}
    assert flux.training_defaults(False, {"guidance_embeds": False})["sample_steps"] == 4  # schnell
    from lorakit.train.config import TrainConfig

    cfg = TrainConfig(resolution=640).with_family_defaults(families.get("sdxl"), False)
    assert (cfg.resolution, cfg.sample_steps, cfg.sample_guidance) == (640, 20, 7.5)  # given values stay


def test_print_config_shows_the_family_values(root, tmp_path, capsys):
    sd2v = tiny_model_dir(root, "sd2", "v_prediction")
    code, out, _ = _cli(["train", "--model", sd2v, "--print-config"], capsys)
    assert code == 0 and "\nresolution = 768 " in out and "\nsample_guidance = 7.5 " in out
    code, out, _ = _cli(["train", "--model", sd2v, "--print-config", "--resolution", "256"], capsys)
    assert "\nresolution = 256 " in out
    code, out, _ = _cli(["train", "--print-config"], capsys)  # no model: left to the family, said so
    assert "# resolution = " in out and "# model = " in out


# --- --model required ------------------------------------------------------------------------------
def test_model_is_required(images, tmp_path, capsys):
    code, out, err = _cli(["train", "--data", images, "--out", tmp_path / "x.safetensors"], capsys)
    assert code == 2 and err.strip() == ("error: no base model: give --model (a diffusers folder, a .safetensors "
                                         "file or a hub id; --model toy trains the built-in toy model)")
    assert not (tmp_path / "x-run").exists()


def test_the_train_form_asks_for_a_model_instead_of_the_toy(tmp_path):
    from lorakit.ui.train_tab import train_config

    values = dict(model=" ", data=str(tmp_path), trigger="", out=str(tmp_path / "o.safetensors"), preset="attn",
                  rank=4, alpha=4, conv_rank=0, steps=4, lr=1e-3, batch_size=1, resolution=32, optimizer="adamw",
                  scheduler="constant", train_text_encoder=False, class_prompt="", class_data="", sample_prompts="",
                  sample_every=0, save_every=0, extra_toml="", resume="")
    with pytest.raises(LoraKitError, match="choose a base model"):
        train_config(**values)
    assert train_config(**{**values, "model": "toy"}).model == "toy"


# --- kohya's sample-prompt options ------------------------------------------------------------------
def test_sample_prompt_line_as_sd_scripts_reads_it():
    p = parse_line("a dog on a beach, sunny --n blurry, lowres --w 512 --h 768 --s 28 --l 7.5 --d 42 --ss k_euler_a")
    # sd-scripts' line_to_prompt_dict on that line: {prompt: "a dog on a beach, sunny", negative_prompt:
    # "blurry, lowres", width: 512, height: 768, sample_steps: 28, scale: 7.5, seed: 42, sample_sampler: k_euler_a}
    assert (p.prompt, p.negative, p.width, p.height, p.steps, p.guidance, p.seed, p.sampler) == (
        "a dog on a beach, sunny", "blurry, lowres", 512, 768, 28, 7.5, 42, "euler_a")
    assert parse_line("x --S 5000 --W 64").steps == 1000 and parse_line("x --S 5000 --W 64").width == 64
    assert parse_line("plain prompt, no options").prompt == "plain prompt, no options"


@pytest.mark.parametrize("line, says", [("a --w abc", "--w 'abc' is not a valid width"),
                                        ("a --l", "is not a valid guidance"),
                                        ("a --x 3", "unknown option --x"),
                                        ("a --g 3.5", "--g: Flux.1's embedded guidance"),
                                        ("a --ss dpm_2_a", "unknown sampler 'dpm_2_a'"),
                                        ("a --w 4", "at least 8 pixels")])
def test_malformed_sample_prompt_is_one_line(line, says, images, sd1, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("good one --w 32\n" + line + "\n")
    with pytest.raises(LoraKitError, match=says):
        read_sample_prompts(prompts, "")
    code, _, err = _cli(["train", "--model", sd1, "--data", images, "--sample-every", "1", "--sample-prompts",
                         prompts, "--out", tmp_path / "o.safetensors"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"{prompts} (prompt 2): " in err and says in err


def test_sample_prompt_options_become_settings_not_prompt_text():
    from diffusers import DDIMScheduler

    from lorakit.train.sampling import render_samples

    calls = []

    class Pipe:
        scheduler = DDIMScheduler()
        unet = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32, config=SimpleNamespace(in_channels=4))
        vae = object()
        vae_scale_factor = 8

        def __call__(self, prompts, **kw):
            calls.append((prompts, kw, type(self.scheduler).__name__))
            return SimpleNamespace(images=[object()])

    pipe = Pipe()
    prompts = [parse_line("a dog --n blurry --w 64 --h 96 --s 3 --l 4.5 --d 42 --ss euler_a"), parse_line("a cat")]
    render_samples(pipe, prompts, seed=1234, steps=20, guidance=7.5, size=32, clip_skip=2)
    (p1, kw1, sched1), (p2, kw2, sched2) = calls
    assert p1 == ["a dog"] and kw1["negative_prompt"] == ["blurry"] and (kw1["width"], kw1["height"]) == (64, 96)
    assert (kw1["num_inference_steps"], kw1["guidance_scale"], sched1) == (3, 4.5, "EulerAncestralDiscreteScheduler")
    assert torch.equal(kw1["latents"], torch.randn((1, 4, 12, 8), generator=torch.Generator().manual_seed(42)))
    assert kw1["clip_skip"] == 1  # kohya's 2 (the penultimate layer) is diffusers' 1 skipped layer
    assert p2 == ["a cat"] and "negative_prompt" not in kw2 and (kw2["width"], kw2["num_inference_steps"]) == (32, 20)
    assert kw2["guidance_scale"] == 7.5 and sched2 == "DDIMScheduler"  # the run's own settings, seed 1234 + 1
    assert torch.equal(kw2["latents"], torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(1235)))
    assert isinstance(pipe.scheduler, DDIMScheduler)  # restored


def test_samples_of_a_run_take_each_prompts_size(sd1, images, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a square --w 32 --h 48 --s 2 --ss euler --d 3\na circle --n blurry --s 2\n")
    result = run(config(sd1, images, tmp_path, steps=1, sample_every=1, sample_prompts=prompts))
    from PIL import Image

    grid = Image.open(result.run_dir / "samples" / "step-000001.png")
    assert grid.size == (64, 48)  # two cells of the largest sample, 32 × 48 (the other is --resolution 32)


# --- --epochs and --save-every-epochs ---------------------------------------------------------------
def test_epochs_count_steps_as_kohya(sd1, tmp_path):
    data = tmp_path / "data"
    make_images(data / "3_thing", sizes=((32, 32),) * 4)  # 4 images × 3 repeats = 12, batch 2: 6 batches
    trainer = Trainer(config(sd1, data, tmp_path, epochs=2, batch_size=2, grad_accum=4))
    trainer.setup()
    # kohya: max_train_epochs × ⌈len(dataloader) / processes / accumulation⌉ = 2 × ⌈6 / 1 / 4⌉ = 4
    assert trainer.data.plan.batches_per_epoch == 6 and trainer.steps_per_epoch == 2 and trainer.cfg.steps == 4


def test_save_every_epochs_writes_kohya_names_with_the_weights_of_that_step(sd1, tmp_path):
    data = make_images(tmp_path / "data", sizes=((32, 32), (32, 32)))  # 2 batches of 1 an epoch
    cfg = config(sd1, data, tmp_path, epochs=3, save_every_epochs=1, out=tmp_path / "out" / "dog.safetensors",
                 lr=1e-3)
    seen = {}
    trainer = Trainer(cfg)
    trainer.on_step = lambda step, loss: seen.__setitem__(  # copies: on CPU the state dict shares the weights
        step, {k: v.clone() for k, v in trainer._unwrapped_network().kohya_state_dict().items()})
    result = trainer.run()
    assert result.step == 6
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".safetensors")
    assert names == ["dog-000001.safetensors", "dog-000002.safetensors", "dog.safetensors"]  # the last: the final
    for epoch, step in ((1, 2), (2, 4)):
        path = tmp_path / "out" / f"dog-{epoch:06d}.safetensors"
        assert _max_diff(load_file(str(path)), seen[step]) == 0.0
        md = _metadata(path)
        assert md["ss_epoch"] == str(epoch) and md["ss_steps"] == str(step)
    assert _max_diff(load_file(str(tmp_path / "out" / "dog-000001.safetensors")), seen[4]) > 1e-5


def test_save_every_epochs_needs_epochs(sd1, images, tmp_path, capsys):
    code, _, err = _cli(["train", "--model", sd1, "--data", images, "--save-every-epochs", "1"], capsys)
    assert code == 2 and "--save-every-epochs needs --epochs" in err and len(err.strip().splitlines()) == 1


# --- --network-weights: 2 + 2 steps equal 4 steps with the optimizer restarted at 2 ----------------------
@pytest.fixture(scope="module")
def continued(root, sd1, images):
    """Four runs on the same data: A (2 steps), B (2 more from A's file), C (4 steps, AdamW's state
    cleared after step 2, as a continued kohya run restarts its optimizer), D (4 plain steps)."""
    out = root / "continue"

    def cfg(name, **kw):
        return config(sd1, images, out, out=out / f"{name}.safetensors", lr=2e-3, **kw)

    run(cfg("a", steps=2))
    b = run(cfg("b", steps=2, network_weights=out / "a.safetensors"))
    trainer = Trainer(cfg("c", steps=4))

    def restart(step, loss):
        if step == 2:
            trainer.optimizer.optimizer.state.clear()

    trainer.on_step = restart
    c = trainer.run()
    d = run(cfg("d", steps=4))
    return SimpleNamespace(out=out, b=b, c=c, d=d, cfg=cfg)


def test_two_plus_two_continued_steps_equal_four_with_the_optimizer_restarted(continued):
    b = load_file(str(continued.out / "b.safetensors"))
    c = load_file(str(continued.out / "c.safetensors"))
    d = load_file(str(continued.out / "d.safetensors"))
    a = load_file(str(continued.out / "a.safetensors"))
    assert _max_diff(b, c) < 1e-6
    assert _max_diff(b, a) > 1e-4  # B trained on from A
    assert _max_diff(b, d) > 1e-5  # uninterrupted AdamW differs: its moments carry over (what --resume keeps)
    assert continued.b.losses == pytest.approx(continued.c.losses[2:], rel=1e-6)  # the same batches, noise
    assert _metadata(continued.out / "b.safetensors")["ss_steps"] == "4"  # counted on from A's 2


def test_dim_from_weights_takes_rank_and_modules_from_the_file(continued):
    b2 = run(continued.cfg("b2", steps=2, rank=2, alpha=1.0, preset="attn",
                           network_weights=continued.out / "a.safetensors", dim_from_weights=True))
    b = load_file(str(continued.out / "b.safetensors"))
    assert _max_diff(load_file(str(continued.out / "b2.safetensors")), b) < 1e-6
    assert b2.network.adapters[next(iter(b2.network.adapters))].rank == 4


def test_network_weights_of_another_rank_is_one_line(continued, capsys, sd1, images):
    code, _, err = _cli(["train", "--model", sd1, "--data", images, "--rank", "8", "--network-weights",
                         continued.out / "a.safetensors", "--resolution", "32", "--bucket-step", "8", "--steps", "1",
                         "--no-progress", "--no-tensorboard", "--out", continued.out / "bad.safetensors"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "has rank 4, this run 8: give --rank 4" in err and "a.safetensors" in err


def test_dim_from_weights_needs_the_file(sd1, images, capsys):
    code, _, err = _cli(["train", "--model", sd1, "--data", images, "--dim-from-weights"], capsys)
    assert code == 2 and "--dim-from-weights needs --network-weights" in err
