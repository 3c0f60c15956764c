"""Flux.1 training: the resolution-dependent timestep shift, the guidance embedding, the 2×2
packing, the conditioning, and the loop on a tiny Flux pipeline (loss down, resume exact)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_support import fixed_batch_loss  # noqa: E402
from flux_support import tiny_flux_pipeline  # noqa: E402
from train_support import config, make_images, one_thread  # noqa: E402

from lorakit.families.flux.family import FAMILY, TRAIN_GUIDANCE, unpack  # noqa: E402
from lorakit.formats import load_lora  # noqa: E402
from lorakit.train.conditioning import Conditioner  # noqa: E402
from lorakit.train.flow_matching import FlowMatching  # noqa: E402
from lorakit.train.loop import run  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fluxmodel")
    tiny_flux_pipeline().save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("fluximgs") / "data", sizes=((32, 32), (32, 32)))


def test_timestep_shift_follows_the_resolution_as_the_pipeline_does(pipe):
    """μ grows linearly from 0.5 at 256 packed tokens (512 px) to 1.15 at 4096 (1024² px), and σ is
    shifted by the scheduler's own time_shift: exp(μ)/(exp(μ) + 1/σ − 1)."""
    import math

    cfg = pipe.scheduler.config
    assert FAMILY.timestep_shift(cfg, 32, 32) == pytest.approx(0.5)  # 256 px: 32×32 latents → 16×16 = 256 tokens
    assert FAMILY.timestep_shift(cfg, 128, 128) == pytest.approx(1.15)  # 1024 px: 128×128 latents → 4096 tokens
    assert FAMILY.timestep_shift(cfg, 4, 4) == pytest.approx(0.5 - 0.65 * 252 / 3840)  # 4 tokens: below the base
    f = FlowMatching.from_config(cfg)
    t0, s0 = f.sample(64, torch.Generator().manual_seed(0))
    t1, s1 = f.sample(64, torch.Generator().manual_seed(0), mu=1.15)
    want = math.exp(1.15) / (math.exp(1.15) + 1 / s0 - 1)
    assert torch.allclose(s1, want, atol=1e-6) and torch.allclose(t1, s1 * 1000)
    assert (s1 > s0).all()  # larger images: noisier timesteps


def test_pack_and_unpack_are_the_pipelines(pipe):
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    packed = FluxPipeline._pack_latents(x, 2, 4, 6, 8)
    assert packed.shape == (2, 12, 16)
    assert torch.equal(packed[0, 1], x[0, :, 0:2, 2:4].reshape(4, 4).reshape(-1))  # token 1: rows 0-1, cols 2-3
    assert torch.equal(unpack(packed, 6, 8, 4), x)


def test_guidance_reaches_the_embedding(pipe):
    tr = pipe.transformer
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(1, 4, 8, 8, generator=g)
    cond = {"hidden": torch.randn(1, 5, 32, generator=g), "pooled": torch.randn(1, 8, generator=g)}
    t = torch.tensor([400.0])
    with torch.no_grad():
        a = FAMILY.predict(tr, noisy, t, cond, {"guidance": torch.tensor([TRAIN_GUIDANCE])}, torch.float32)
        b = FAMILY.predict(tr, noisy, t, cond, {}, torch.float32)
        c = FAMILY.predict(tr, noisy, t, cond, {"guidance": torch.tensor([1.0])}, torch.float32)
        from diffusers import FluxPipeline

        ref = tr(hidden_states=FluxPipeline._pack_latents(noisy, 1, 4, 8, 8), timestep=t / 1000,
                 guidance=torch.tensor([3.5]), pooled_projections=cond["pooled"],
                 encoder_hidden_states=cond["hidden"], txt_ids=torch.zeros(5, 3),
                 img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32), return_dict=False)[0]
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-4)
    assert torch.allclose(a, unpack(ref, 8, 8, 4), atol=1e-6)


def test_conditioning_equals_the_pipeline_and_recomputes_clip_with_cached_t5(pipe):
    cond = Conditioner(pipe, "flux")
    caps = ["a photo of sks dog", "a red circle"]
    enc = cond.encode(caps)
    ref, pooled, _ = pipe.encode_prompt(caps, None, device="cpu", max_sequence_length=32)
    assert torch.allclose(enc["hidden"], ref, atol=1e-5) and torch.allclose(enc["pooled"], pooled, atol=1e-5)
    assert enc["hidden"].shape == (2, 32, 32) and enc["pooled"].shape == (2, 8)
    ids = cond.tokenize(caps)
    again = FAMILY.encode_text([pipe.text_encoder, None], None, ids[:1], {"t5": enc["t5"]})
    assert torch.allclose(again["hidden"], ref, atol=1e-5) and torch.allclose(again["pooled"], pooled, atol=1e-5)




def test_training_lowers_the_loss_on_a_fixed_batch(flux_dir, tmp_path):
    data = make_images(tmp_path / "one", sizes=((32, 32),))
    cfg = config(flux_dir, data, tmp_path, steps=12, lr=1e-2, rank=8, seed=4)
    run(cfg)
    before, after = fixed_batch_loss(flux_dir, data), fixed_batch_loss(flux_dir, data, cfg.out)
    assert after < 0.9 * before, (before, after)
    lf = load_lora(cfg.out)
    assert lf.format == "kohya" and lf.family == "flux"
    assert lf.metadata["ss_base_model_version"] == "flux1"
    assert lf.metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert sorted(lf.modules) == sorted(n for n in __import__("lorakit.families.flux.naming", fromlist=["x"]).default_kohya_names(
        2, 2, 0))


def test_resume_equals_uninterrupted(flux_dir, images, tmp_path):
    common = dict(steps=4, grad_accum=2, scheduler="cosine", warmup_steps=1, trigger="sks", lr=1e-3, seed=11,
                  dropout=0.1, guidance_scale=1.0, train_text_encoder=True)
    full = run(config(flux_dir, images, tmp_path / "a", **common))

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    cfg = config(flux_dir, images, tmp_path / "b", **common)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_step=stop_at_2)
    resumed = run(cfg.override({"resume": cfg.resolved_run_dir()}))
    assert resumed.losses == full.losses
    a, b = full.network.kohya_state_dict(), resumed.network.kohya_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("lora_te1_") for k in a) and not any(k.startswith("lora_te3_") for k in a)
