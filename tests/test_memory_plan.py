"""The memory plan's parts against hand computation, its budget choices, and the CLI's --plan."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorakit import memory_plan as mp
from lorakit.errors import LoraKitError
from lorakit.memory_budget import fit, parse_size
from lorakit.models.sketch import Sketch, sketch
from lorakit.quantized import quantize_linears, stored_bytes

CONFIGS = __import__("pathlib").Path(mp.__file__).parent / "models" / "configs"


def test_plain_weight_bytes_are_parameters_times_bytes():
    model = nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.Linear(256, 32))
    n = sum(p.numel() for p in model.parameters())  # 64*256+256 + 2*256 + 256*32+32 = 25376
    assert n == 25376
    assert mp.weight_bytes(model, "fp32", torch.float32) == 4 * n
    assert mp.weight_bytes(model, "bf16", torch.bfloat16) == 2 * n


def test_quantized_weight_bytes_by_hand_and_as_torchao_stores_them():
    model = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 8))  # the second is quantizable too (8192 ≥ 256)
    others = 1024 + 8  # biases, kept in bf16
    for fmt in ("fp8", "int8"):  # a byte a weight, an fp32 scale a row
        want = (1024 * 1024 + 8 * 1024) + 4 * (1024 + 8) + 2 * others
        assert mp.weight_bytes(model, fmt, torch.bfloat16) == want
    # nf4: half a byte a weight, a byte per block of 64, a bf16 scale per 256 blocks (the narrow layer's 128
    # blocks share one scale: 128 divides them, 256 does not)
    want = (1024 * 1024 // 2 + 16384 + 2 * 64) + (8192 // 2 + 128 + 2 * 1) + 2 * others
    assert mp.weight_bytes(model, "nf4", torch.bfloat16) == want
    pytest.importorskip("torchao")
    for fmt in ("fp8", "int8", "nf4"):
        real = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 8)).to(torch.bfloat16)
        planned = mp.weight_bytes(real, fmt, torch.bfloat16)
        quantize_linears(real, fmt, torch.bfloat16)
        assert stored_bytes(real) == planned, fmt


def test_real_size_sketches_read_from_configs_alone():
    flux = sketch(str(CONFIGS / "flux1-dev"))
    assert flux.family.name == "flux" and flux.denoiser.device.type == "meta"
    assert sum(p.numel() for p in flux.denoiser.parameters()) == 11_901_408_320
    assert mp.weight_bytes(flux.denoiser, "bf16", torch.bfloat16) == 2 * 11_901_408_320
    t5 = flux.text_encoders["text_encoder_2"]
    assert sum(p.numel() for p in t5.parameters()) == 4_762_310_656
    sd35l = sketch(str(CONFIGS / "sd35-large"))
    assert sd35l.family.name == "sd3" and len(sd35l.text_encoders) == 3


def test_lora_parameters_are_what_training_creates():
    from sd3_support import tiny_sd3_pipeline

    from lorakit.lora import LoRANetwork, ModelParts

    pipe = tiny_sd3_pipeline()
    sk = Sketch(__import__("lorakit.families", fromlist=["get"]).get("sd3"), "folder", pipe.transformer,
                dict(pipe.transformer.config), {"text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2,
                                                "text_encoder_3": pipe.text_encoder_3}, pipe.vae, dict(pipe.vae.config))
    settings = mp.Settings(rank=4, train_text_encoder=False)
    shapes = mp.lora_parameters(sk, settings)
    net = LoRANetwork.create(ModelParts("sd3", pipe.transformer, [], dict(pipe.transformer.config)), rank=4,
                             text_encoder=False)
    n = sum(p.numel() for p in net.parameters())
    assert n > 0 and mp.lora_bytes(shapes) == 4 * n
    assert mp.optimizer_bytes("adamw", shapes) == 12 * n  # two fp32 moments + foreach's temporary
    assert mp.optimizer_bytes("lion", shapes) == 4 * n


def test_adafactor_state_is_the_planned_factored_moment():
    from lorakit.train.optim import build_optimizer

    a, b = nn.Parameter(torch.randn(4, 96)), nn.Parameter(torch.randn(80, 4))
    opt = build_optimizer("adafactor", [{"params": [a, b]}], lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    (a.sum() + b.square().sum()).backward()
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0)
    assert state == mp.optimizer_bytes("adafactor", [(4, 96), (80, 4)]) == 4 * (4 + 96 + 80 + 4)


def test_cache_and_activation_parts_by_hand():
    flux = sketch(str(CONFIGS / "flux1-dev"))
    s = mp.Settings(resolution=512, images=3, captions=2)
    # 16 latent channels × 64 × 64 fp32 per image
    assert mp.latent_cache_bytes(flux, s) == 3 * 16 * 64 * 64 * 4
    # 512 T5 tokens × 4096 + the 768 pooled, fp32, per caption
    assert mp.text_cache_bytes(flux, s) == 2 * (512 * 4096 + 768) * 4
    block = (32 * 32 + 512) * 3072  # image tokens (2×2 latent pixels each) and text tokens × width
    assert mp.training_activation_bytes(flux, s, torch.bfloat16) == block * 57 * mp.DIT_TRAIN_VALUES[False] * 2
    gc = s.but(gradient_checkpointing=True)  # every block's inputs kept, one block recomputed
    per = 57 * mp.DIT_TRAIN_VALUES[True] + mp.DIT_RECOMPUTED_BLOCK_VALUES
    assert mp.training_activation_bytes(flux, gc, torch.bfloat16) == int(block * per * 2)


def _flux_plan(**changes):
    flux = sketch(str(CONFIGS / "flux1-dev"))
    settings = mp.Settings(device="cpu", mixed_precision="bf16", **changes)
    return flux, settings, (lambda s: mp.train_plan(flux, s))


def test_budget_that_fits_changes_nothing():
    _, settings, plan_of = _flux_plan()
    choice = fit(settings, 10**13, plan_of)
    assert choice.settings == settings and choice.steps == []


def test_tight_budgets_pick_fp8_then_nf4():
    _, settings, plan_of = _flux_plan()
    gc = plan_of(settings.but(gradient_checkpointing=True, base_precision="fp8"))
    choice = fit(settings, gc.total, plan_of)
    assert (choice.settings.base_precision, choice.settings.gradient_checkpointing) == ("fp8", True)
    nf4 = plan_of(settings.but(gradient_checkpointing=True, base_precision="nf4"))
    assert nf4.total < gc.total
    choice = fit(settings, nf4.total, plan_of)
    assert choice.settings.base_precision == "nf4" and choice.settings.optimizer == "adamw"
    assert any(step.startswith("base nf4") for step in choice.steps)


def test_impossible_budget_is_refused_in_one_line():
    _, settings, plan_of = _flux_plan()
    with pytest.raises(LoraKitError) as e:
        fit(settings, parse_size("1GB"), plan_of)
    assert "nothing fits" in str(e.value) and "\n" not in str(e.value)


def test_parse_size():
    assert parse_size("12GB") == 12 * 10**9 and parse_size("12GiB") == 12 * 2**30 and parse_size("900MB") == 9 * 10**8
    with pytest.raises(LoraKitError):
        parse_size("twelve")


def test_cli_train_plan_prints_the_table(tmp_path, capsys):
    from lorakit.cli import main

    assert main(["train", "--model", "toy", "--plan", "--out", str(tmp_path / "x.safetensors")]) in (0, None)
    out = capsys.readouterr().out
    for part in ("denoiser weights", "text encoders", "activations", "optimizer state", "peak"):
        assert part in out
    assert not (tmp_path / "x-run").exists()


def test_cli_generate_plan_and_impossible_budget(capsys):
    from lorakit.cli import main

    assert main(["generate", "--model", "toy", "--prompt", "x", "--plan"]) in (0, None)
    assert "peak" in capsys.readouterr().out
    rc = main(["generate", "--model", "toy", "--prompt", "x", "--plan", "--memory-budget", "1MB"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nothing fits" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_plan_within_20_percent_of_the_measured_peak(tmp_path):
    """Flux.1-dev's width with 1 double and 1 single block, real CLIP-L and VAE, a T5 of XXL width with one
    layer (random bf16 weights, a diffusers folder): one training step at 512 px, rank 16, in a child
    process; its peak RSS against `train --plan`."""
    import importlib.util
    import shutil

    bench = CONFIGS.parents[3] / "benchmarks" / "plan_calibration.py"
    spec = importlib.util.spec_from_file_location("plan_calibration", bench)
    cal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cal)
    cal.MODELS["flux-1-1"] = dict(config="flux1-dev", transformer=dict(num_layers=1, num_single_layers=1),
                                  encoders={"text_encoder_2": dict(num_layers=1)}, t5_tokens=512)
    try:
        folder = cal.build("flux-1-1", tmp_path)
        args = ["train", "--model", str(folder), "--data", str(cal.data(tmp_path)), "--steps", "1", "--resolution",
                "512", "--rank", "16", "--out", str(tmp_path / "out.safetensors"), "--no-progress",
                "--no-tensorboard"]
        estimate, _ = cal.estimate(args)
        peak, _, _ = cal.measure(args)
        assert 0.8 <= estimate / peak <= 1.2, (estimate / 2**30, peak / 2**30)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_cli_train_impossible_budget_exits_2_in_one_line(capsys):
    from lorakit.cli import main

    rc = main(["train", "--model", "toy", "--memory-budget", "1MB", "--plan"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nothing fits" in err and len(err.splitlines()) == 1


def test_gpu_budget_below_every_format_swaps_the_fewest_blocks():
    flux = sketch(str(CONFIGS / "flux1-dev"))
    settings = mp.Settings(device="cuda", mixed_precision="bf16")
    plan_of = lambda s: mp.train_plan(flux, s)  # noqa: E731
    smallest = settings.but(gradient_checkpointing=True, base_precision="nf4", optimizer="adamw8bit")
    budget = plan_of(smallest.but(blocks_to_swap=20)).total
    assert budget < plan_of(smallest).total
    choice = fit(settings, budget, plan_of, blocks=57)
    assert choice.settings == smallest.but(blocks_to_swap=20)  # 19 blocks would not fit
    assert choice.steps[-1].startswith("block swap of 20 blocks")
    # on a CPU there is no block swap to fall back on
    with pytest.raises(LoraKitError, match="nothing fits"):
        fit(settings.but(device="cpu"), budget, plan_of, blocks=57)


def test_swapped_bytes_are_the_last_blocks_less_the_one_in_flight():
    flux = sketch(str(CONFIGS / "flux1-dev"))
    single = flux.denoiser.single_transformer_blocks[-1]
    size = 2 * sum(p.numel() for p in single.parameters())  # bf16
    s = mp.Settings(device="cuda", blocks_to_swap=3)
    assert mp.swapped_bytes(flux, s, "bf16", torch.bfloat16) == 2 * size
    assert mp.swapped_bytes(flux, s.but(device="cpu"), "bf16", torch.bfloat16) == 0


def test_single_file_sketch_reads_the_header_and_configs(tmp_path):
    """A BFL single file (the family from its header), the encoders' configs from --text-encoders: the same
    parts as the pipeline it was written from, no weight read."""
    import json

    from flux_support import tiny_flux_pipeline
    from safetensors.torch import save_file

    from lorakit.families.flux import naming as flux_naming
    from lorakit.families.flux.family import FAMILY

    pipe = tiny_flux_pipeline()
    ckpt = tmp_path / "flux1-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in flux_naming.diffusers_state_to_bfl(pipe.transformer.state_dict()).items()},
              str(ckpt))
    parts, config = tmp_path / "parts", tmp_path / "config"
    pipe.save_pretrained(str(parts))
    (config / "transformer").mkdir(parents=True)
    (config / "transformer" / "config.json").write_text(json.dumps(dict(pipe.transformer.config)))
    pipe.scheduler.save_pretrained(str(config / "scheduler"))
    (config / "model_index.json").write_text((FAMILY.config_dir(variant="dev") / "model_index.json").read_text())
    sk = sketch(str(ckpt), config_dir=config, text_encoders=parts)
    assert sk.kind == "single_file" and sk.family.name == "flux"
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(sk.denoiser) == count(pipe.transformer)
    assert {n: count(m) for n, m in sk.text_encoders.items()} == \
        {"text_encoder": count(pipe.text_encoder), "text_encoder_2": count(pipe.text_encoder_2)}
    assert count(sk.vae) == count(pipe.vae)  # Flux's VAE comes from that folder too
    assert mp.weight_bytes(sk.denoiser, "bf16", torch.bfloat16) == 2 * count(pipe.transformer)


def test_generate_plan_stages_big_text_encoders_apart_from_the_denoiser():
    """Flux (T5-XXL) generates in three phases, the denoiser never beside the text encoders nor beside
    the VAE's decode; the peak is the largest phase. SD 1.5's encoder stays beside its UNet."""
    flux = sketch(str(CONFIGS / "flux1-dev"))
    settings = mp.Settings(device="cpu", base_precision="fp8", resolution=512, n=1, guidance=3.5)
    plan = mp.generate_plan(flux, settings)
    names = [[p.name for p in phase.parts] for phase in plan.phases]
    assert [phase.name for phase in plan.phases] == ["encoding the prompts", "generation", "decoding"]
    assert "text encoders" in names[0] and "denoiser weights" not in names[0]
    assert "denoiser weights" in names[1] and "text encoders" not in names[1]
    assert "denoiser weights" not in names[2] and "text encoders" not in names[2]
    decode = next(p.bytes for p in plan.phases[2].parts if p.name == "activations")
    assert decode == mp.vae_pass_bytes(flux, 512, torch.bfloat16)
    assert all(p.bytes != decode for p in plan.phases[1].parts if p.name == "activations")
    encoders = next(p.bytes for p in plan.phases[0].parts if p.name == "text encoders")
    assert encoders == mp.encoders_bytes(flux, mp.encoder_formats(flux, settings, torch.bfloat16))
    assert plan.total == max(ph.total for ph in plan.phases) == plan.phases[1].total  # 11.9 GB of fp8 weights outweigh 4.8 GB of fp8 T5 + CLIP-L
    sd15 = sketch("toy")
    assert [phase.name for phase in mp.generate_plan(sd15, settings.but(base_precision="auto")).phases] == ["generation"]
