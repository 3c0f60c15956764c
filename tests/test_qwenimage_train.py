"""Qwen-Image training: Qwen2.5-VL's conditioning through the chat template, the VAE's per-channel
latents, the packed transformer call, musubi-tuner's qwen_shift, and the loop on a tiny Qwen-Image
pipeline (loss down, resume exact)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_support import fixed_batch_loss  # noqa: E402
from qwenimage_support import tiny_qwenimage_pipeline  # noqa: E402
from train_support import config, make_images, one_thread  # noqa: E402

from lorakit.families.qwenimage import naming as qwen_naming  # noqa: E402
from lorakit.families.qwenimage.family import FAMILY  # noqa: E402
from lorakit.formats import load_lora  # noqa: E402
from lorakit.train.conditioning import Conditioner, encode_pixels  # noqa: E402
from lorakit.train.loop import run  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def pipe():
    return tiny_qwenimage_pipeline()


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwenmodel")
    tiny_qwenimage_pipeline().save_pretrained(root / "model")
    return root / "model"


def test_conditioning_and_prediction_equal_the_pipeline(pipe):
    """The template's 34 tokens dropped, the caption's hidden states masked after it, one transformer
    call as QwenImagePipeline makes it (its text trimmed to the longest caption); the cached copy gives
    the same conditioning."""
    caps = ["a photo of sks dog", "a red circle"]
    enc = Conditioner(pipe, "qwenimage").encode(caps)
    with torch.no_grad():
        ref, mask = pipe._get_qwen_prompt_embeds(caps, device="cpu")
    n = ref.shape[1]
    assert enc["hidden"].shape == (2, 512, 32) and enc["mask"].sum(dim=1).tolist() == [10, 8]
    assert torch.allclose(enc["hidden"][:, :n], ref, atol=1e-5) and not enc["hidden"][:, n:].any()
    assert torch.equal(enc["mask"][:, :n], mask.float())
    noisy, t = torch.randn(2, 16, 8, 8), torch.tensor([300.0, 700.0])
    with torch.no_grad():
        ours = FAMILY.predict(pipe.transformer, noisy, t, enc, {}, torch.float32)
        theirs = pipe.transformer(hidden_states=pipe._pack_latents(noisy, 2, 16, 8, 8), timestep=t / 1000,
                                  encoder_hidden_states=ref, encoder_hidden_states_mask=mask,
                                  img_shapes=[[(1, 4, 4)]] * 2, return_dict=False)[0]
        unmasked = FAMILY.predict(pipe.transformer, noisy, t, {"hidden": ref}, {}, torch.float32)
    assert torch.allclose(ours, pipe._unpack_latents(theirs, 64, 64, 8)[:, :, 0], atol=1e-5)
    assert not torch.allclose(ours, unmasked, atol=1e-4)  # the mask reaches the transformer
    again = FAMILY.encode_text([None], [pipe.tokenizer], FAMILY.tokenize([pipe.tokenizer], caps), {"qwen": enc["qwen"]})
    assert torch.equal(again["hidden"], enc["hidden"]) and torch.equal(again["mask"], enc["mask"])
    assert FAMILY.extra_inputs([None]) == {}


def test_latents_and_shift_are_the_pipelines(pipe):
    """Latents (z − mean) / std per channel of the one frame, undone exactly as QwenImagePipeline
    decodes; the shift is its calculate_shift with Qwen-Image's 256/8192, 0.5/0.9 (musubi's qwen_shift)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    px = torch.rand(1, 3, 32, 32) * 2 - 1
    lat = encode_pixels(pipe.vae, px, FAMILY)
    with torch.no_grad():
        z = pipe.vae.encode(px[:, :, None]).latent_dist.mean[:, :, 0]
        mean = torch.tensor(pipe.vae.config.latents_mean).view(1, 16, 1, 1)
        std = torch.tensor(pipe.vae.config.latents_std).view(1, 16, 1, 1)
        decoded = FAMILY.decode_latents(pipe.vae, lat)
        want = pipe.vae.decode((lat * std + mean)[:, :, None], return_dict=False)[0][:, :, 0]
    assert lat.shape == (1, 16, 16, 16) and torch.allclose(lat, (z - mean) / std, atol=1e-6)
    assert torch.allclose(decoded, want, atol=1e-6)
    assert FAMILY.vae_geometry(pipe.vae.config) == (2, 8) and FAMILY.vae_geometry(
        {"temperal_downsample": [False, True, True], "base_dim": 96, "dim_mult": [1, 2, 4, 4]}) == (8, 96)
    config = pipe.scheduler.config
    assert FAMILY.timestep_shift(config, 166, 166) == pytest.approx(calculate_shift(83 * 83, 256, 8192, 0.5, 0.9))
    assert FAMILY.timestep_shift({}, 32, 32) == pytest.approx(0.5)  # 256 tokens: the base shift


def test_training_lowers_the_loss_on_a_fixed_batch(qwen_dir, tmp_path):
    data = make_images(tmp_path / "one", sizes=((32, 32),))
    cfg = config(qwen_dir, data, tmp_path, steps=12, lr=1e-2, rank=8, seed=4)
    run(cfg)
    before, after = fixed_batch_loss(qwen_dir, data), fixed_batch_loss(qwen_dir, data, cfg.out)
    assert after < 0.9 * before, (before, after)
    lf = load_lora(cfg.out)
    assert lf.format == "kohya" and lf.family == "qwenimage"
    assert lf.metadata["ss_base_model_version"] == "qwen_image"
    assert sorted(lf.modules) == qwen_naming.default_kohya_names(2)


def test_resume_equals_uninterrupted(qwen_dir, tmp_path):
    images = make_images(tmp_path / "data", sizes=((32, 32), (32, 32)))
    common = dict(steps=4, grad_accum=2, scheduler="cosine", warmup_steps=1, trigger="sks", lr=1e-3, seed=11,
                  dropout=0.1)
    full = run(config(qwen_dir, images, tmp_path / "a", **common))

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    cfg = config(qwen_dir, images, tmp_path / "b", **common)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_step=stop_at_2)
    resumed = run(cfg.override({"resume": cfg.resolved_run_dir()}))
    assert resumed.losses == full.losses
    a, b = full.network.kohya_state_dict(), resumed.network.kohya_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
