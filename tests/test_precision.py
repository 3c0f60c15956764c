"""The choice of number format: per device and model size, printed once, overridable; bf16 training keeps
the LoRA and optimizer in fp32; bf16 merge/unmerge/switch gives the original weights back bit for bit."""

import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from lorakit import precision
from lorakit.devices import load_model_for_inference, resolve_device_dtype
from lorakit.lora import LoRAModule, LoRANetwork
from lorakit.lora.targets import ModelParts, Target
from lorakit.train.loop import Trainer, run

from conftest import parts_of
from train_support import config, make_images, one_thread, tiny_model_dir

one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture
def fast_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_kind", lambda: "AVX512-BF16")


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_kind", lambda: None)


# --- the rule --------------------------------------------------------------------------------------
def test_cpu_choice_follows_the_denoiser_size(fast_bf16):
    big = precision.choose("cpu", 860_000_000)
    assert (big.name, big.dtype, big.mixed_precision) == ("bf16", torch.bfloat16, "bf16")
    assert big.line() == "precision: bf16 (CPU with AVX512-BF16, UNet 860 M parameters ≥ 20 M)"
    small = precision.choose("cpu", 2_181_252)
    assert (small.name, small.dtype, small.mixed_precision) == ("fp32", torch.float32, "no")
    assert small.line() == "precision: fp32 (UNet 2.2 M parameters: bf16 is slower below 20 M on this CPU)"
    edge = precision.BF16_MIN_PARAMETERS_CPU
    assert precision.choose("cpu", edge).name == "bf16" and precision.choose("cpu", edge - 1).name == "fp32"
    unknown = precision.choose("cpu", None)
    assert unknown.name == "bf16" and not unknown.final  # waits for the loaded model's size


def test_cpu_without_bf16_stays_fp32_whatever_the_size(no_bf16):
    p = precision.choose("cpu", 3_000_000_000)
    assert p.name == "fp32" and "without AVX512-BF16 or AMX" in p.reason and p.final


def test_cuda_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.choose("cuda", 2_000_000).name == "bf16"  # size does not matter on a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.choose("cuda:0", None).name == "fp16"


@pytest.mark.parametrize("asked,name", [("no", "fp32"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_an_explicit_choice_wins(fast_bf16, asked, name):
    p = precision.choose("cpu", 2_000_000 if name == "bf16" else 900_000_000, asked)
    assert p.name == name and p.reason == "as asked"


def test_the_run_time_probe_agrees_with_cpuinfo():
    flags = open("/proc/cpuinfo").read().split()
    kind = precision.cpu_bf16_kind()
    assert (kind is not None) == ("avx512_bf16" in flags or "amx_bf16" in flags)


# --- generation ------------------------------------------------------------------------------------
def test_generate_auto_dtype_on_cpu(fast_bf16, monkeypatch, capsys):
    """Images are drawn in fp32 on a CPU whatever the model's size (bf16 would blur a LoRA's effect:
    tests/test_lora_effect.py); said once, by the first image."""
    import lorakit.models.size as size
    from lorakit.generate import generate

    line = "precision: fp32 (CPU: bf16 would blur a LoRA's effect, fp16 runs emulated)"
    assert resolve_device_dtype("cpu", "auto", "toy") == ("cpu", torch.float32)
    assert resolve_device_dtype("cpu", "bf16", "toy") == ("cpu", torch.bfloat16)
    model = load_model_for_inference("toy", "cpu", "auto")
    assert model.unet.dtype == torch.float32 and model.precision.line() == line
    assert "precision:" not in capsys.readouterr().err  # said by the first image, after the input is checked
    for seed in (0, 1):
        generate(model, "a red circle", steps=1, seed=seed, progress=False)
    assert capsys.readouterr().err.count(line) == 1
    monkeypatch.setattr(size, "denoiser_parameters", lambda spec: 860_000_000)  # where training takes bf16
    monkeypatch.setattr(size, "weight_count", lambda spec: None)  # a hub id: no size known before loading
    model = load_model_for_inference("toy", "cpu", "auto")
    assert model.unet.dtype == torch.float32 and model.pipe.text_encoder.dtype == torch.float32


# --- training --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("prec")


@pytest.fixture(scope="module")
def images(root):
    return make_images(root / "images", sizes=((32, 32), (32, 32)))


def _md(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_auto_on_a_small_model_trains_in_fp32(root, images, tmp_path, fast_bf16, capsys):
    model = tiny_model_dir(root, "sd1")
    r = run(config(model, images, tmp_path, steps=2))
    assert r.model.unet.dtype == torch.float32
    assert _md(r.out)["ss_mixed_precision"] == "no"
    err = capsys.readouterr().err
    assert err.count("precision:") == 1 and "precision: fp32 (UNet " in err and "bf16 is slower below 20 M" in err
    explicit = run(config(model, images, tmp_path / "no", steps=2, mixed_precision="no"))
    assert explicit.losses == r.losses  # auto chose exactly the fp32 path


def test_auto_on_a_large_enough_model_trains_bf16_with_fp32_lora(root, images, tmp_path, fast_bf16, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr(precision, "BF16_MIN_PARAMETERS_CPU", 10_000)
    model = tiny_model_dir(root, "sd1")
    trainer = Trainer(config(model, images, tmp_path, steps=2, rank=4))
    r = trainer.run()
    assert trainer.precision.name == "bf16" and trainer.acc.mixed_precision == "no"  # no autocast on CPU
    assert r.model.unet.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in r.network.parameters())
    states = [s for s in trainer.optimizer.state.values()]
    assert states and all(v.dtype == torch.float32 for s in states for v in s.values() if torch.is_tensor(v)
                          and v.dim() > 0)
    assert all(torch.isfinite(torch.tensor(r.losses)))
    assert any(p.abs().sum() > 0 for n, p in r.network.named_parameters() if "lora_up" in n)
    assert _md(r.out)["ss_mixed_precision"] == "bf16"
    err = capsys.readouterr().err
    assert err.count("precision:") == 1 and "precision: bf16 (CPU with AVX512-BF16, UNet " in err


def test_size_known_only_after_loading_trains_like_fp32(root, images, tmp_path, fast_bf16, monkeypatch, capsys):
    import lorakit.models.size as size

    model = tiny_model_dir(root, "sd1")
    want = run(config(model, images, tmp_path / "want", steps=2, mixed_precision="no"))
    monkeypatch.setattr(size, "denoiser_parameters", lambda spec: None)  # as for a single file or a hub id
    trainer = Trainer(config(model, images, tmp_path / "got", steps=2))
    got = trainer.run()
    assert trainer.precision.name == "fp32" and got.model.unet.dtype == torch.float32
    assert got.losses == want.losses  # loaded again in fp32, not cast up from bf16
    assert capsys.readouterr().err.count("precision: fp32 (UNet") == 1


def test_cpu_without_bf16_trains_fp32(root, images, tmp_path, no_bf16, capsys):
    r = run(config(tiny_model_dir(root, "sd1"), images, tmp_path, steps=1))
    assert r.model.unet.dtype == torch.float32 and _md(r.out)["ss_mixed_precision"] == "no"
    assert "precision: fp32 (CPU without AVX512-BF16 or AMX" in capsys.readouterr().err


def test_mixed_precision_auto_is_the_default_and_validated():
    from lorakit.errors import LoraKitError
    from lorakit.train.config import TrainConfig

    assert TrainConfig().mixed_precision == "auto"
    with pytest.raises(LoraKitError, match="auto, no, fp16, bf16"):
        TrainConfig(data="x", mixed_precision="fp8").validate()


# --- merge / unmerge in bf16 ---------------------------------------------------------------------
def _randomize(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_bf16_merge_is_fp32_math_and_switching_never_drifts(tiny_sd1):
    pipe = copy.deepcopy(tiny_sd1)
    nn.Module.to(pipe.unet, dtype=torch.bfloat16)
    parts = parts_of(pipe, "sd1")
    a = LoRANetwork.create(parts, rank=4, preset="attn", text_encoder=False)
    b = LoRANetwork.create(parts, rank=2, preset="cross-attn", text_encoder=False)
    _randomize(a, 1)
    _randomize(b, 2)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    layer = a.targets[name].module
    originals = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    a.multiplier = 0.8
    a.merge()
    w0 = originals[[k for k, v in pipe.unet.named_parameters() if v is layer.weight][0]]
    assert torch.equal(layer.weight, (w0.float() + 0.8 * a.adapters[name].delta_weight()).bfloat16())
    for k in range(20):  # what the web UI does as the user moves sliders and swaps LoRAs
        b.merge()
        a.multiplier = 0.3 + 0.05 * k
        b.multiplier = -0.7 + 0.1 * k
        b.unmerge()
    expected = (w0.float() + a.multiplier * a.adapters[name].delta_weight()).bfloat16()
    assert torch.equal(layer.weight, expected)  # rebuilt from the original each time, not accumulated
    a.unmerge()
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, originals[k]), k


def test_bf16_on_the_fly_equals_merged_within_bf16():
    torch.manual_seed(0)
    base = nn.Linear(64, 48).bfloat16()
    lora = LoRAModule(nn.Linear(64, 48), rank=8)
    nn.init.normal_(lora.lora_up.weight, std=0.05)
    net = LoRANetwork()
    net.add(Target("lora_te_x", "x", "te", base, ""), lora)
    x = torch.randn(5, 64).bfloat16()
    net.apply()
    fly = base(x)
    assert fly.dtype == torch.bfloat16
    net.remove()
    net.merge()
    merged = base(x)
    ref = x.float() @ (base.weight.float()).T + base.bias.float()
    assert (fly.float() - merged.float()).abs().max() <= 0.02 * ref.abs().max()


# --- loading in bf16 without a full fp32 copy ---------------------------------------------------------
@pytest.mark.parametrize("shard", [None, "200KB"])
def test_streamed_bf16_denoiser_equals_diffusers_cast(tmp_path, tiny_sd1, shard):
    from diffusers import UNet2DConditionModel

    from lorakit.models import load_model
    from lorakit.models.streamed import load_denoiser

    folder = tmp_path / "m"
    kw = {"max_shard_size": shard} if shard else {}
    tiny_sd1.save_pretrained(folder, **kw)
    if shard:
        assert (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    got = load_denoiser(folder / "unet", "UNet2DConditionModel", torch.bfloat16)
    want = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.bfloat16)
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c1, c2 = dict(got.config), dict(want.config)
    assert str(c1.pop("_name_or_path")) == str(c2.pop("_name_or_path")) == str(folder)
    assert c1 == c2 and not got.training
    model = load_model(str(folder), dtype=torch.bfloat16)  # the loader takes this path for half dtypes
    assert all(torch.equal(v, b[k]) for k, v in model.unet.state_dict().items())


def test_streamed_reader_declines_what_it_does_not_cover(tmp_path, tiny_sd1):
    from safetensors.torch import load_file, save_file

    from lorakit.models.streamed import load_denoiser

    folder = tmp_path / "m"
    tiny_sd1.save_pretrained(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    save_file({k: v for k, v in list(sd.items())[1:]}, str(weights))  # a tensor missing
    assert load_denoiser(folder / "unet", "UNet2DConditionModel", torch.bfloat16) is None
    save_file({**sd, "extra.weight": torch.zeros(2)}, str(weights))  # a tensor the class does not have
    assert load_denoiser(folder / "unet", "UNet2DConditionModel", torch.bfloat16) is None
    weights.unlink()
    assert load_denoiser(folder / "unet", "UNet2DConditionModel", torch.bfloat16) is None
