"""Flux.2 training: the Qwen3 conditioning, the patchified batch-norm latents, the transformer call and
flux2_shift as the pipeline and musubi-tuner make them, and the loop on a tiny klein pipeline (loss
down, resume exact)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_support import fixed_batch_loss  # noqa: E402
from flux2_support import tiny_flux2_pipeline  # noqa: E402
from train_support import config, make_images, one_thread  # noqa: E402

from lorakit.families.flux2 import naming as flux2_naming  # noqa: E402
from lorakit.families.flux2.family import FAMILY  # noqa: E402
from lorakit.formats import load_lora  # noqa: E402
from lorakit.train.conditioning import Conditioner  # noqa: E402
from lorakit.train.loop import run  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux2_pipeline()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux2model")
    tiny_flux2_pipeline().save_pretrained(root / "model")
    return root / "model"


def test_conditioning_latents_and_prediction_equal_the_pipeline(pipe):
    caps = ["a photo of sks dog", "a red circle"]
    enc = Conditioner(pipe, "flux2").encode(caps)
    ref = pipe._get_qwen3_prompt_embeds(pipe.text_encoder, pipe.tokenizer, caps, device="cpu")
    assert enc["hidden"].shape == (2, 512, 24) and torch.allclose(enc["hidden"], ref, atol=1e-6)
    again = FAMILY.encode_text([None], [pipe.tokenizer], FAMILY.tokenize([pipe.tokenizer], caps), {"llm": enc["llm"]})
    assert torch.equal(again["hidden"], enc["hidden"])

    px = torch.rand(2, 3, 16, 16) * 2 - 1
    lat = FAMILY.encode_latents(pipe.vae, px)
    assert lat.shape == (2, 16, 4, 4) and torch.allclose(lat, pipe._encode_vae_image(px, None), atol=1e-6)

    noisy, t = torch.randn(2, 16, 4, 4), torch.tensor([300.0, 700.0])
    hidden = torch.randn(2, 7, 24)
    with torch.no_grad():
        ours = FAMILY.predict(pipe.transformer, noisy, t, {"hidden": hidden}, {}, torch.float32)
        theirs = pipe.transformer(hidden_states=pipe._pack_latents(noisy), timestep=t / 1000,
                                  encoder_hidden_states=hidden, txt_ids=pipe._prepare_text_ids(hidden),
                                  img_ids=pipe._prepare_latent_ids(noisy), guidance=None, return_dict=False)[0]
    assert torch.allclose(ours, pipe._unpack_latents_with_ids(theirs, pipe._prepare_latent_ids(noisy)), atol=1e-6)

    # musubi-tuner's flux2_shift: mu linear in h·w of the patchified latents, 0.5 at 256, 1.15 at 4096
    assert math.isclose(FAMILY.timestep_shift(pipe.scheduler.config, 16, 16), 0.5)
    assert math.isclose(FAMILY.timestep_shift(pipe.scheduler.config, 64, 64), 1.15)
    assert FAMILY.extra_inputs([None, None])["guidance"].tolist() == [1.0, 1.0]


def test_dev_prediction_feeds_the_guidance_input(pipe):
    dev = tiny_flux2_pipeline(transformer={"guidance_embeds": True}).transformer
    noisy, t, hidden = torch.randn(1, 16, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 24)
    with torch.no_grad():
        one = FAMILY.predict(dev, noisy, t, {"hidden": hidden}, {"guidance": torch.tensor([1.0])}, torch.float32)
        four = FAMILY.predict(dev, noisy, t, {"hidden": hidden}, {"guidance": torch.tensor([4.0])}, torch.float32)
        default = FAMILY.predict(dev, noisy, t, {"hidden": hidden}, {}, torch.float32)
    assert torch.equal(one, default) and not torch.allclose(one, four, atol=1e-4)
    assert FAMILY.variant_of_config(dev.config) == "dev" and FAMILY.variant_of_config(pipe.transformer.config) == "klein-4b"


def test_training_lowers_the_loss_on_a_fixed_batch(model_dir, tmp_path):
    data = make_images(tmp_path / "one", sizes=((32, 32),))
    cfg = config(model_dir, data, tmp_path, steps=24, lr=3e-2, rank=8, seed=4)
    run(cfg)
    before, after = fixed_batch_loss(model_dir, data), fixed_batch_loss(model_dir, data, cfg.out)
    assert after < 0.9 * before, (before, after)
    lf = load_lora(cfg.out)
    assert lf.format == "kohya" and lf.family == "flux2"
    assert lf.metadata["ss_base_model_version"] == "flux2"
    assert sorted(lf.modules) == sorted(flux2_naming.default_kohya_names(2, 2))


def test_resume_equals_uninterrupted(model_dir, tmp_path):
    images = make_images(tmp_path / "data", sizes=((32, 32), (32, 32)))
    common = dict(steps=4, grad_accum=2, scheduler="cosine", warmup_steps=1, trigger="sks", lr=1e-3, seed=11,
                  dropout=0.1)
    full = run(config(model_dir, images, tmp_path / "a", **common))

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    cfg = config(model_dir, images, tmp_path / "b", **common)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_step=stop_at_2)
    resumed = run(cfg.override({"resume": cfg.resolved_run_dir()}))
    assert resumed.losses == full.losses
    a, b = full.network.kohya_state_dict(), resumed.network.kohya_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
