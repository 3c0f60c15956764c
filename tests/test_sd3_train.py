"""SD 3.x training pieces: the flow-matching objective and the conditioning."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sd3_support import tiny_sd3_pipeline  # noqa: E402

from lorakit.train.flow_matching import FlowMatching  # noqa: E402
from lorakit.train.sd3_conditioning import SD3Conditioner  # noqa: E402


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
    cond = SD3Conditioner(pipe)
    caps = ["a photo of sks dog", "a red circle"]
    enc = cond.encode(caps)
    ref, _, pooled, _ = pipe.encode_prompt(caps, None, None, do_classifier_free_guidance=False, max_sequence_length=77)
    assert torch.allclose(enc["hidden"], ref, atol=1e-5) and torch.allclose(enc["pooled"], pooled, atol=1e-5)
    assert enc["hidden"].shape == (2, 77 + 77, 32) and enc["pooled"].shape == (2, 16)
    assert torch.equal(cond.encode_t5(caps), enc["t5"])
    again = cond.encode_ids(cond.tokenize(caps), enc["t5"])
    assert torch.allclose(again["hidden"], ref, atol=1e-5) and torch.allclose(again["pooled"], pooled, atol=1e-5)
