"""Z-Image training and generation: Qwen3's chat-template conditioning, the transformer call (1 − σ in,
x₀ − ε out), staged generation, and the loop on a tiny Z-Image pipeline (loss down, resume exact)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_support import fixed_batch_loss  # noqa: E402
from train_support import config, make_images, one_thread  # noqa: E402
from zimage_support import tiny_zimage_pipeline  # noqa: E402

from lorakit.families.zimage import naming as zi  # noqa: E402
from lorakit.families.zimage.family import FAMILY  # noqa: E402
from lorakit.formats import load_lora  # noqa: E402
from lorakit.train.conditioning import Conditioner  # noqa: E402
from lorakit.train.loop import run  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def pipe():
    return tiny_zimage_pipeline()


@pytest.fixture(scope="module")
def zimage_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("zimagemodel")
    tiny_zimage_pipeline().save_pretrained(root / "model")
    return root / "model"


def test_conditioning_and_prediction_equal_the_pipeline(pipe):
    """Qwen3's second-to-last layer on the chat-templated caption, real tokens only, as
    ZImagePipeline._encode_prompt; the transformer called as the pipeline calls it, negated into the
    velocity ε − x₀ the loss compares with (musubi-tuner's target x₀ − ε on the raw output)."""
    caps = ["a photo of sks dog", "a red circle"]
    enc = Conditioner(pipe, "zimage").encode(caps)
    ref = pipe._encode_prompt(list(caps), device="cpu", max_sequence_length=32)
    assert enc["mask"].sum(dim=1).tolist() == [10, 8]  # 3 chat-template special tokens, "user", "assistant", the words
    for i, r in enumerate(ref):
        assert torch.equal(enc["hidden"][i][enc["mask"][i] > 0.5], r)
    noisy, t = torch.randn(2, 4, 8, 8), torch.tensor([300.0, 700.0])
    with torch.no_grad():
        ours = FAMILY.predict(pipe.transformer, noisy, t, enc, {}, torch.float32)
        raw = pipe.transformer([x.unsqueeze(1) for x in noisy], (1000 - t) / 1000, ref, return_dict=False)[0]
        padded = FAMILY.predict(pipe.transformer, noisy, t, {"hidden": enc["hidden"]}, {}, torch.float32)
    assert torch.allclose(ours, -torch.stack([o.squeeze(1) for o in raw]), atol=1e-6)
    assert not torch.allclose(ours, padded, atol=1e-4)  # the padding never reaches the transformer
    assert FAMILY.extra_inputs([None]) == {} and FAMILY.timestep_shift(pipe.scheduler.config, 64, 64) is None
    again = FAMILY.encode_text([None], [pipe.tokenizer], FAMILY.tokenize([pipe.tokenizer], caps), {"qwen": enc["qwen"]})
    assert torch.equal(again["hidden"], enc["hidden"]) and torch.equal(again["mask"], enc["mask"])


def test_staged_prompt_inputs_give_the_pipeline_own_latents(pipe):
    """Generation encodes first and releases Qwen3: the pipeline fed `prompt_inputs` gives the latents of
    its own call, with CFG (guidance 4, a negative prompt) and without (Turbo's guidance 0)."""
    for guidance, negative in ((4.0, "a cat"), (0.0, "")):
        kw = dict(num_inference_steps=2, guidance_scale=guidance, height=32, width=32, output_type="latent")
        own = pipe("a photo of sks dog", negative_prompt=negative or None, generator=torch.Generator().manual_seed(1),
                   **kw).images
        with torch.no_grad():
            inputs = FAMILY.prompt_inputs(pipe, "a photo of sks dog", negative, guidance)
        staged = pipe(**inputs, generator=torch.Generator().manual_seed(1), **kw).images
        assert own.shape == (1, 4, 16, 16) and torch.equal(own, staged), guidance


def test_training_lowers_the_loss_on_a_fixed_batch(zimage_dir, tmp_path):
    data = make_images(tmp_path / "one", sizes=((32, 32),))
    cfg = config(zimage_dir, data, tmp_path, steps=12, lr=1e-2, rank=8, seed=4)
    run(cfg)
    before, after = fixed_batch_loss(zimage_dir, data), fixed_batch_loss(zimage_dir, data, cfg.out)
    assert after < 0.9 * before, (before, after)
    lf = load_lora(cfg.out)
    assert lf.format == "kohya" and lf.family == "zimage"
    assert lf.metadata["ss_base_model_version"] == "z_image" and lf.metadata["modelspec.architecture"] == "Z-Image/lora"
    assert sorted(lf.modules) == sorted(zi.default_kohya_names(2))


def test_resume_equals_uninterrupted(zimage_dir, tmp_path):
    images = make_images(tmp_path / "data", sizes=((32, 32), (32, 32)))
    common = dict(steps=4, grad_accum=2, scheduler="cosine", warmup_steps=1, trigger="sks", lr=1e-3, seed=11,
                  dropout=0.1)
    full = run(config(zimage_dir, images, tmp_path / "a", **common))

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    cfg = config(zimage_dir, images, tmp_path / "b", **common)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_step=stop_at_2)
    resumed = run(cfg.override({"resume": cfg.resolved_run_dir()}))
    assert resumed.losses == full.losses
    a, b = full.network.kohya_state_dict(), resumed.network.kohya_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("lora_te") for k in a)
