"""The format that draws images shows a LoRA's effect (output with it minus output without) as fp32 does,
on a model large enough that bf16 pays for training; where fp32 would not fit, bf16 with the reason."""

import pytest
import torch

from lorakit import precision
from lorakit.devices import load_model_for_inference
from lorakit.generate import LoraSpec, attach_loras, detach_loras

from train_support import one_thread

one_thread = pytest.fixture(autouse=True)(one_thread)

TOLERANCE = 0.05  # a LoRA drawn at 0.9 of its strength is 10 % off: it must fail this


@pytest.fixture
def sd15_sized_toy(monkeypatch):
    """The toy, on a CPU with fast bf16, taken for a denoiser of SD 1.5's size (bf16 pays for training)."""
    import lorakit.models.size as size

    monkeypatch.setattr(precision, "cpu_bf16_kind", lambda: "AVX512-BF16")
    monkeypatch.setattr(size, "denoiser_parameters", lambda spec: 860_000_000)
    assert precision.choose("cpu", 860_000_000).name == "bf16"  # what training runs in on this CPU
    return "toy"


@pytest.fixture(scope="module")
def modest_lora(tmp_path_factory):
    """A kohya fp16 file on the toy's UNet whose ΔW is 1 % of each layer's weight (rms), as a trained
    LoRA's is on SD 1.5 (ΔW rms 1.4e-4 against W rms 0.017)."""
    from lorakit.formats import save_lora
    from lorakit.lora import LoRANetwork

    model = load_model_for_inference("toy", "cpu", "fp32")
    net = LoRANetwork.create(model.parts(), rank=4, alpha=4, text_encoder=False, init=None)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, a in net.adapters.items():
            a.lora_down.weight.copy_(torch.randn(a.lora_down.weight.shape, generator=g))
            a.lora_up.weight.copy_(torch.randn(a.lora_up.weight.shape, generator=g))
            w_rms = net.targets[name].module.weight.float().pow(2).mean().sqrt()
            a.lora_up.weight.mul_(0.01 * w_rms / a.delta_weight().pow(2).mean().sqrt())
    path = tmp_path_factory.mktemp("effect") / "modest.safetensors"
    save_lora(path, net.kohya_modules(), {}, family="sd1")
    return path


def _effect(model, lora, strength: float, merge: bool) -> torch.Tensor:
    """One UNet call with the LoRA attached as `generate` attaches it, minus the same call without."""
    config = model.unet.config
    g = torch.Generator().manual_seed(1)
    side = config.sample_size
    latents = torch.randn(2, config.in_channels, side, side, generator=g).to(model.unet.dtype)
    context = torch.randn(2, 77, config.cross_attention_dim, generator=g).to(model.unet.dtype)

    def call():
        with torch.no_grad():
            return model.unet(latents, torch.tensor([500]), encoder_hidden_states=context).sample.float()

    base = call()
    networks = attach_loras(model, [LoraSpec(lora, strength)], merge=merge)
    try:
        return call() - base
    finally:
        detach_loras(networks)


def _error(effect, reference) -> float:
    return float((effect - reference).norm() / reference.norm())


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "on-the-fly"])
def test_default_format_shows_a_lora_effect_as_fp32_does(sd15_sized_toy, modest_lora, merge):
    default = load_model_for_inference(sd15_sized_toy, "cpu", "auto")
    reference = load_model_for_inference(sd15_sized_toy, "cpu", "fp32")
    truth = _effect(reference, modest_lora, 1.0, merge=True)
    for strength in (1.0, 0.3):
        expected = truth if strength == 1.0 else _effect(reference, modest_lora, strength, merge=True)
        got = _effect(default, modest_lora, strength, merge=merge)
        assert _error(got, expected) < TOLERANCE, (default.precision.line(), strength, _error(got, expected))
    # the tolerance refuses a LoRA drawn at 0.9 of its strength
    assert _error(_effect(default, modest_lora, 0.9, merge=merge), truth) > TOLERANCE


def test_bf16_where_fp32_would_not_fit(sd15_sized_toy, monkeypatch):
    import lorakit.fit_check as memory
    from lorakit.models.size import weight_count

    weights = weight_count("toy")
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 4 * weights - 1)
    model = load_model_for_inference("toy", "cpu", "auto")
    assert model.unet.dtype == torch.bfloat16
    assert "fp32 weights (" in model.precision.reason and "would not fit" in model.precision.reason
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 4 * weights)
    assert load_model_for_inference("toy", "cpu", "auto").unet.dtype == torch.float32


def test_weight_count_reads_every_part_from_the_headers():
    from lorakit.models.size import weight_count

    model = load_model_for_inference("toy", "cpu", "fp32")
    parts = [model.pipe.unet, model.pipe.vae, model.pipe.text_encoder]
    assert weight_count("toy") == sum(t.numel() for p in parts for t in p.state_dict().values())
    assert weight_count("not-a-model") is None
