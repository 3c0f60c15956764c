"""Chroma training: the T5 conditioning with its mask, no guidance, σ unshifted, and the loop on a
tiny Chroma pipeline (loss down, resume exact)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from chroma_support import tiny_chroma_pipeline  # noqa: E402
from dit_support import fixed_batch_loss  # noqa: E402
from train_support import config, make_images, one_thread  # noqa: E402

from lorakit.families.chroma import naming as chroma_naming  # noqa: E402
from lorakit.families.chroma.family import FAMILY  # noqa: E402
from lorakit.formats import load_lora  # noqa: E402
from lorakit.train.conditioning import Conditioner  # noqa: E402
from lorakit.train.loop import run  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def pipe():
    return tiny_chroma_pipeline()


@pytest.fixture(scope="module")
def chroma_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("chromamodel")
    tiny_chroma_pipeline().save_pretrained(root / "model")
    return root / "model"


def test_conditioning_and_prediction_equal_the_pipeline(pipe):
    """T5 with the tokenizer's mask, the transformer mask keeping one pad token, and one transformer
    call as ChromaPipeline makes it; no guidance and σ unshifted (sd-scripts' sigmoid sampling)."""
    caps = ["a photo of sks dog", "a red circle"]
    enc = Conditioner(pipe, "chroma").encode(caps)
    ref, mask = pipe._get_t5_prompt_embeds(caps, max_sequence_length=32, device="cpu")
    assert torch.allclose(enc["hidden"], ref, atol=1e-6) and torch.equal(enc["mask"], mask)
    assert enc["mask"].sum(dim=1).tolist() == [6, 4]  # 5 and 3 tokens with </s>, plus one pad
    noisy, t = torch.randn(2, 4, 8, 8), torch.tensor([300.0, 700.0])
    with torch.no_grad():
        ours = FAMILY.predict(pipe.transformer, noisy, t, enc, {}, torch.float32)
        packed = pipe._pack_latents(noisy, 2, 4, 8, 8)
        theirs = pipe.transformer(hidden_states=packed, timestep=t / 1000, encoder_hidden_states=ref,
                                  txt_ids=torch.zeros(32, 3), img_ids=pipe._prepare_latent_image_ids(2, 4, 4, "cpu",
                                                                                                     torch.float32),
                                  attention_mask=pipe._prepare_attention_mask(2, 16, torch.float32, mask),
                                  return_dict=False)[0]
        unmasked = FAMILY.predict(pipe.transformer, noisy, t, {"hidden": ref}, {}, torch.float32)
    assert torch.allclose(ours, pipe._unpack_latents(theirs, 64, 64, 8), atol=1e-6)
    assert not torch.allclose(ours, unmasked, atol=1e-5)  # the mask reaches the transformer
    assert FAMILY.extra_inputs([None]) == {} and FAMILY.timestep_shift(pipe.scheduler.config, 128, 128) is None
    again = FAMILY.encode_text([None], [pipe.tokenizer], FAMILY.tokenize([pipe.tokenizer], caps), {"t5": enc["t5"]})
    assert torch.equal(again["hidden"], enc["hidden"]) and torch.equal(again["mask"], enc["mask"])




def test_training_lowers_the_loss_on_a_fixed_batch(chroma_dir, tmp_path):
    data = make_images(tmp_path / "one", sizes=((32, 32),))
    cfg = config(chroma_dir, data, tmp_path, steps=12, lr=1e-2, rank=8, seed=4)
    run(cfg)
    before, after = fixed_batch_loss(chroma_dir, data), fixed_batch_loss(chroma_dir, data, cfg.out)
    assert after < 0.9 * before, (before, after)
    lf = load_lora(cfg.out)
    assert lf.format == "kohya" and lf.family == "chroma"
    assert lf.metadata["ss_base_model_version"] == "chroma" and lf.metadata["modelspec.architecture"] == "chroma/lora"
    assert sorted(lf.modules) == sorted(chroma_naming.default_kohya_names(2, 2))


def test_resume_equals_uninterrupted(chroma_dir, tmp_path):
    images = make_images(tmp_path / "data", sizes=((32, 32), (32, 32)))
    common = dict(steps=4, grad_accum=2, scheduler="cosine", warmup_steps=1, trigger="sks", lr=1e-3, seed=11,
                  dropout=0.1)
    full = run(config(chroma_dir, images, tmp_path / "a", **common))

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    cfg = config(chroma_dir, images, tmp_path / "b", **common)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_step=stop_at_2)
    resumed = run(cfg.override({"resume": cfg.resolved_run_dir()}))
    assert resumed.losses == full.losses
    a, b = full.network.kohya_state_dict(), resumed.network.kohya_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("lora_te") for k in a)
