"""SD 3.x training pieces: the flow-matching objective and the conditioning."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dit_support import fixed_batch  # noqa: E402
from sd3_support import tiny_sd3_pipeline  # noqa: E402

from lorakit.train.flow_matching import FlowMatching  # noqa: E402
from lorakit.train.conditioning import Conditioner  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd3_pipeline()


def fm(scheme="logit_normal"):
    return FlowMatching.from_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                                     "shift": 3.0}, scheme=scheme)


def test_sigmas_are_sd3_shifted_and_match_the_timesteps():
    f = fm()
    t, s = f.sample(4096, torch.Generator().manual_seed(0))
    assert torch.allclose(t, s * 1000, atol=1e-2)  # FlowMatchEuler: timestep = 1000·σ
    # shift 3: σ = 3u'/(1 + 2u') of the unshifted grid u' = k/1000, k = 1…1000
    grid = torch.arange(1, 1001, dtype=torch.float64) / 1000
    shifted = (3 * grid / (1 + 2 * grid)).float()
    assert all(torch.isclose(shifted, x, atol=1e-6).any() for x in s[:50])
    # logit-normal around u = 0.5 (median index 500 → σ of the grid at 0.5, shifted)
    assert s.median().item() == pytest.approx(3 * 0.5 / (1 + 2 * 0.5), abs=0.02)


def test_schemes_and_weights_by_hand():
    s = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(fm("sigma_sqrt").weights(s), s ** -2)
    assert torch.allclose(fm("cosmap").weights(s), 2 / (math.pi * (1 - 2 * s + 2 * s ** 2)))
    assert torch.equal(fm("logit_normal").weights(s), torch.ones(3))
    u = fm("uniform").sample(20000, torch.Generator().manual_seed(1))[1]
    m = fm("mode").sample(20000, torch.Generator().manual_seed(1))[1]
    assert u.mean().item() != pytest.approx(m.mean().item(), abs=0.01)  # mode reshapes the density
    with pytest.raises(ValueError, match="weighting scheme"):
        fm("bogus")


def test_noisy_input_and_velocity_target_by_hand():
    x, n = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    s = torch.tensor([0.25, 0.75])
    noisy = FlowMatching.noisy(x, n, s)
    assert torch.allclose(noisy[0], 0.75 * x[0] + 0.25 * n[0]) and torch.allclose(noisy[1], 0.25 * x[1] + 0.75 * n[1])
    assert torch.equal(FlowMatching.target(x, n), n - x)


def test_sampling_depends_only_on_the_generator():
    a = fm().sample(8, torch.Generator().manual_seed(3))
    torch.manual_seed(99)
    b = fm().sample(8, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_conditioning_equals_the_pipeline_and_recomputes_clip_with_gradients(pipe):
    cond = Conditioner(pipe, "sd3")
    caps = ["a photo of sks dog", "a red circle"]
    enc = cond.encode(caps)
    ref, _, pooled, _ = pipe.encode_prompt(caps, None, None, do_classifier_free_guidance=False, max_sequence_length=77)
    assert torch.allclose(enc["hidden"], ref, atol=1e-5) and torch.allclose(enc["pooled"], pooled, atol=1e-5)
    assert enc["hidden"].shape == (2, 77 + 77, 32) and enc["pooled"].shape == (2, 16)
    ids = cond.tokenize(caps)
    assert [x.shape[1] for x in ids] == [77, 77, 77]
    again = cond.encode_ids(ids[:2], {"t5": enc["t5"]})  # T5 released: its states from the cache
    assert torch.allclose(again["hidden"], ref, atol=1e-5) and torch.allclose(again["pooled"], pooled, atol=1e-5)


# --- the training loop on a tiny SD3 pipeline ------------------------------------------------------------
from train_support import config, make_images, one_thread  # noqa: E402

from lorakit.formats import load_lora  # noqa: E402
from lorakit.train.loop import run  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3model")
    tiny_sd3_pipeline().save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("sd3imgs") / "data", sizes=((32, 32), (32, 32)))


def _fixed_batch_loss(model_dir, image_dir, lora=None) -> float:
    """The flow-matching loss on one fixed batch, through the transformer's own call (not the family's)."""
    model, noisy, sigmas, cond, target = fixed_batch(model_dir, image_dir, lora)
    with torch.no_grad():
        pred = model.pipe.transformer(hidden_states=noisy, timestep=sigmas * 1000, encoder_hidden_states=cond["hidden"],
                                      pooled_projections=cond["pooled"], return_dict=False)[0]
    return float(torch.nn.functional.mse_loss(pred, target))


def test_training_lowers_the_loss_on_a_fixed_batch(sd3_dir, tmp_path):
    data = make_images(tmp_path / "one", sizes=((32, 32),))
    cfg = config(sd3_dir, data, tmp_path, steps=12, lr=1e-2, rank=8, seed=4)
    run(cfg)
    before, after = _fixed_batch_loss(sd3_dir, data), _fixed_batch_loss(sd3_dir, data, cfg.out)
    assert after < 0.9 * before, (before, after)
    lf = load_lora(cfg.out)
    assert lf.format == "diffusers" and lf.family == "sd3"  # the layout diffusers and ComfyUI both load
    assert lf.metadata["ss_base_model_version"] == "5-medium"  # qk-norm + a second attention, as 3.5 medium
    assert lf.metadata["modelspec.architecture"] == "stable-diffusion-3-5-medium/lora"
    assert len([n for n in lf.modules if n.startswith("lora_unet_")]) == 3 * 10 - 3 + 2
    # SD 3.x trains no CLIP LoRA unless asked (the family's default; SD 1.x/2.x/XL train one)
    assert not any(n.startswith("lora_te") for n in lf.modules)
    assert lf.metadata["ss_network_train_unet_only"] == "True"


def test_presets_and_clip_lora_in_kohya_layout(sd3_dir, images, tmp_path):
    cfg = config(sd3_dir, images, tmp_path, preset="attn-mlp", train_text_encoder=True, save_format="kohya",
                 weighting_scheme="mode")
    run(cfg)
    lf = load_lora(cfg.out)
    assert lf.format == "kohya"
    names = set(lf.modules)
    assert "lora_unet_joint_blocks_0_x_block_attn_qkv" in names and "lora_unet_joint_blocks_1_x_block_mlp_fc2" in names
    assert not any("adaLN" in n for n in names)
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc1" in names and not any(n.startswith("lora_te3_") for n in names)


def test_resume_equals_uninterrupted(sd3_dir, images, tmp_path):
    common = dict(steps=4, grad_accum=2, scheduler="cosine", warmup_steps=1, trigger="sks", lr=1e-3, seed=11,
                  dropout=0.1, weighting_scheme="cosmap")
    full = run(config(sd3_dir, images, tmp_path / "a", **common))

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    cfg = config(sd3_dir, images, tmp_path / "b", **common)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_step=stop_at_2)
    resumed = run(cfg.override({"resume": cfg.resolved_run_dir()}))
    assert resumed.losses == full.losses
    a, b = full.network.kohya_state_dict(), resumed.network.kohya_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_min_snr_is_refused_for_flow_matching(sd3_dir, images, tmp_path):
    from lorakit.errors import LoraKitError

    with pytest.raises(LoraKitError, match="weighting-scheme"):
        run(config(sd3_dir, images, tmp_path, min_snr_gamma=5.0))
